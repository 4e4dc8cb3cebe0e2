"""A tiny random pipeline folder of any base, for tests and smoke runs.

`build_tiny_pipeline(out_dir, base="zeroscope")` writes the diffusers layout of that base (for
ZeroScope: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), every weight
random, in safetensors, loadable offline with the usual `from_pretrained(out_dir, subfolder=...)`.
The stock diffusers / transformers classes build it; the base module states the tiny config.

    python -m utils.tools.tiny_model OUT_DIR [--base zeroscope] [--seed N] [--force]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models.bases import BASES, get_base

logger = logging.getLogger(__name__)


def build_tiny_pipeline(out_dir: str | Path, seed: int = 0, base: str = "zeroscope") -> Path:
    """Write a tiny random pipeline folder of `base` to `out_dir` (deterministic in `seed`)."""
    return get_base(base).build_tiny(Path(out_dir), seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random pipeline folder of one base.")
    parser.add_argument("out_dir", type=Path, help="folder to write the pipeline into")
    parser.add_argument("--base", choices=sorted(BASES), default="zeroscope", help="which base (default zeroscope)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR/model_index.json exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (args.out_dir / "model_index.json").exists() and not args.force:
        logger.info("%s already holds a pipeline (model_index.json); skipping (use --force to rebuild)", args.out_dir)
        return
    path = build_tiny_pipeline(args.out_dir, seed=args.seed, base=args.base)
    logger.info("wrote tiny %s pipeline to %s", args.base, path)


if __name__ == "__main__":
    main()
