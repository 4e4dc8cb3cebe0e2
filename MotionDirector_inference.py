"""Generate videos with a trained MotionDirector (its temporal path), as the original script.

    python MotionDirector_inference.py --model ./models/zeroscope_v2_576w \
        --prompt "A tank is running on the moon." --checkpoint_folder ./outputs/train/car_16/ \
        --checkpoint_index 150 --noise_prior 0.5 --seed 8551187

Writes `<output_dir>/<prompt>_<seed>.mp4`; `--prompts_file` generates a prompt set with the same seeds.
Launch with `accelerate launch` to share `--repeat_num` videos between GPUs.
"""

import argparse
import sys
from pathlib import Path

from models.lora import TEMPORAL
from utils.cli import add_sampling_arguments, base_options_from_args, prompts_from_args, run_cli, settings_from_args
from utils.inference.generate import LoraRequest, run_generation
from utils.run_folder import CACHE_DIR, temporal_lora_folder

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate videos with a trained MotionDirector temporal LoRA.")
    add_sampling_arguments(parser)
    parser.add_argument("-cf", "--checkpoint_folder", required=True,
                        help="the training run folder (holds checkpoint-<N>/ and cached_latents/)")
    parser.add_argument("-ci", "--checkpoint_index", default="default",
                        help="N of checkpoint-<N>/, e.g. 300; 'default' (the default) uses checkpoint-default/ "
                             "when present (released weights), else the run's final temporal/lora/")
    parser.add_argument("-ls", "--lora_scale", type=float, default=1.0, help="scale of the temporal LoRA")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    prompts = prompts_from_args(args)
    run = Path(args.checkpoint_folder)
    lora = LoraRequest(temporal_lora_folder(run, str(args.checkpoint_index)), TEMPORAL, args.lora_scale)
    how_to_fix = "use --noise_prior 0, or point --checkpoint_folder at the training run folder"
    paths = run_generation(args.model, [lora], settings_from_args(args), run / CACHE_DIR, how_to_fix,
                           device=args.device, xformers=args.xformers, prompts=prompts,
                           options=base_options_from_args(args))
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
