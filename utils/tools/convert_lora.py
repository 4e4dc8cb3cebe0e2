"""Convert an original MotionDirector LoRA (`<step>_unet.pt`, a list of tensors) to our safetensors format.

    python -m utils.tools.convert_lora --model ./models/zeroscope_v2_576w --path temporal \
        outputs/train/car_16/checkpoint-150/temporal/lora/150_unet.pt 150_unet.safetensors

The list file names no layers, so the base model's UNet is needed to map it; the output holds
peft keys and the LoRA config as metadata, and loads without the model's help.
"""

import argparse
import logging
import sys
from pathlib import Path

from models.bases import load_components
from models.lora import SPATIAL, TEMPORAL
from models.lora_io import load_adapter, save_adapter
from utils.cli import run_cli
from utils.errors import UserError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.tools.convert_lora", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the diffusers text-to-video folder the LoRA was trained on")
    parser.add_argument("--path", required=True, choices=(SPATIAL, TEMPORAL), help="which path the LoRA belongs to")
    parser.add_argument("input", help="the original <step>_unet.pt file (or its .../lora/ folder)")
    parser.add_argument("output", help="the .safetensors file to write (or a folder: named after the input)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def output_file(source: Path, output: Path) -> Path:
    if output.is_dir():
        return output / f"{source.stem}.safetensors"
    if output.suffix != ".safetensors":
        raise UserError(f"the output must end in .safetensors (or be a folder), got {output}")
    return output


def convert(model: str, path: str, source: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Load `source` into the model's denoiser as adapter `path`, then save it as safetensors."""
    components = load_components(model)
    unet = components.denoiser
    file = load_adapter(unet, source, path, components.lora_targets(path))
    target = output_file(file, Path(output))
    if target.exists() and not overwrite:
        raise UserError(f"{target} exists; pass --overwrite to replace it")
    save_adapter(unet, path, target)
    logger.info("converted %s (%s path) to %s", file, path, target)
    return target


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    print(f"wrote {convert(args.model, args.path, args.input, args.output, args.overwrite)}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
