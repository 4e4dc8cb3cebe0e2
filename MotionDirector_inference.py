"""Generate videos with a trained MotionDirector (its temporal path), as the original script.

    python MotionDirector_inference.py --model ./models/zeroscope_v2_576w \
        --prompt "A tank is running on the moon." --checkpoint_folder ./outputs/train/car_16/ \
        --checkpoint_index 150 --noise_prior 0.5 --seed 8551187

Writes `<output_dir>/<prompt>_<seed>.mp4`; `--prompts_file` generates a prompt set with the same seeds.
Launch with `accelerate launch` to share `--repeat_num` videos between GPUs.
"""

import argparse
import re
import sys
from pathlib import Path

from models.lora import TEMPORAL
from utils.cli import add_sampling_arguments, prompts_from_args, run_cli, settings_from_args
from utils.errors import UserError
from utils.inference.generate import LoraRequest, run_generation

_CHECKPOINT_RE = re.compile(r"^checkpoint-(.+)$")


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


def temporal_lora_folder(run: Path, index: str) -> Path:
    """`run/checkpoint-<index>/temporal/lora/`, or for 'default' the released or final adapter."""
    if not run.is_dir():
        raise UserError(f"checkpoint folder not found: {run} (give the training run folder, "
                        "the one holding checkpoint-<N>/)")
    if index == "default":
        for folder in (run / "checkpoint-default" / "temporal" / "lora", run / "temporal" / "lora"):
            if folder.is_dir():
                return folder
        raise UserError(f"{run} has neither checkpoint-default/temporal/lora/ nor temporal/lora/; "
                        f"{_available(run)}")
    if not index.isdigit():
        raise UserError(f"--checkpoint_index must be a number or 'default', got {index!r}")
    folder = run / f"checkpoint-{int(index)}" / "temporal" / "lora"
    if not folder.is_dir():
        raise UserError(f"no checkpoint-{int(index)}/temporal/lora/ in {run}; {_available(run)}")
    return folder


def _available(run: Path) -> str:
    indices = [m[1] for p in run.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and (p / "temporal" / "lora").is_dir()]
    indices.sort(key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0, i))
    if (run / "temporal" / "lora").is_dir() and "default" not in indices:
        indices.append("default")
    if not indices:
        return "it holds no checkpoint with a temporal LoRA (is it a training run folder?)"
    return f"existing checkpoint indices: {', '.join(indices)}"


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    prompts = prompts_from_args(args)
    run = Path(args.checkpoint_folder)
    lora = LoraRequest(temporal_lora_folder(run, str(args.checkpoint_index)), TEMPORAL, args.lora_scale)
    how_to_fix = "use --noise_prior 0, or point --checkpoint_folder at the training run folder"
    paths = run_generation(args.model, [lora], settings_from_args(args), run / "cached_latents", how_to_fix,
                           device=args.device, xformers=args.xformers, prompts=prompts)
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
