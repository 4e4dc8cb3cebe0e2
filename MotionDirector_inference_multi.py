"""Generate videos with a spatial path (appearance) and a temporal path (motion) from separate runs.

    python MotionDirector_inference_multi.py --model ./models/zeroscope_v2_576w \
        --prompt "A car is running on the road." \
        --spatial_path_folder ./outputs/train/image_animation/train_A/checkpoint-300/spatial/lora/ \
        --temporal_path_folder ./outputs/train/image_animation/train_B/checkpoint-300/temporal/lora/ \
        --noise_prior 0.5 --seed 5057764

Writes `<output_dir>/<prompt>_<seed>.mp4` and a `.gif` beside it, as the original did. The noise
prior comes from the temporal path's training run (its cached_latents/).
"""

import argparse
import logging
import sys
from pathlib import Path

from models.lora import SPATIAL, TEMPORAL
from utils.cli import add_sampling_arguments, base_options_from_args, prompts_from_args, run_cli, settings_from_args
from utils.errors import UserError
from utils.inference.generate import LoraRequest, run_generation
from utils.run_folder import cache_of_lora

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate videos with a spatial and a temporal MotionDirector LoRA.")
    add_sampling_arguments(parser)
    parser.add_argument("-slp", "--spatial_path_folder", default=None,
                        help="a .../spatial/lora/ folder (appearance); omit to use no spatial LoRA")
    parser.add_argument("-tlp", "--temporal_path_folder", default=None,
                        help="a .../temporal/lora/ folder (motion); omit to use no temporal LoRA")
    parser.add_argument("-sps", "--spatial_path_scale", type=float, default=1.0, help="scale of the spatial LoRA")
    parser.add_argument("-tps", "--temporal_path_scale", type=float, default=1.0, help="scale of the temporal LoRA")
    return parser


def lora_requests(args: argparse.Namespace) -> list[LoraRequest]:
    paths = ((args.spatial_path_folder, SPATIAL, args.spatial_path_scale),
             (args.temporal_path_folder, TEMPORAL, args.temporal_path_scale))
    requests = [LoraRequest(folder, name, scale) for folder, name, scale in paths if folder]
    if not requests:
        logger.warning("neither --spatial_path_folder nor --temporal_path_folder given: sampling the base model")
    return requests


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    prompts = prompts_from_args(args)
    for flag, folder in (("--spatial_path_folder", args.spatial_path_folder),
                         ("--temporal_path_folder", args.temporal_path_folder)):
        if folder and not Path(folder).exists():
            raise UserError(f"{flag} not found: {folder} (give a .../lora/ folder of a training run)")
    # The noise prior comes from the motion's run; without one, from the appearance's (an image run).
    cache = cache_of_lora(args.temporal_path_folder) or cache_of_lora(args.spatial_path_folder)
    how_to_fix = ("use --noise_prior 0, or give a --temporal_path_folder (or --spatial_path_folder) inside "
                  "its training run (run/checkpoint-<N>/temporal/lora/ or run/temporal/lora/)")
    paths = run_generation(args.model, lora_requests(args), settings_from_args(args, write_gif=True), cache,
                           how_to_fix, device=args.device, xformers=args.xformers, prompts=prompts,
                           options=base_options_from_args(args))
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
