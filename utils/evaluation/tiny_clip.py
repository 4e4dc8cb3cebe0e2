"""A tiny random CLIP (model + processor) folder, for tests and smoke runs of the evaluation.

    python -m utils.evaluation.tiny_clip OUT_DIR [--seed N]

It loads like a real one (`CLIPModel.from_pretrained`, `CLIPProcessor.from_pretrained`), offline.
The tokenizer is the tiny pipelines' hand-made byte-level CLIP tokenizer (models/bases/tiny_parts.py).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from models.bases.tiny_parts import write_clip_tokenizer

logger = logging.getLogger(__name__)

IMAGE_SIZE = 32
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random CLIPModel (32-wide towers, 32x32 images, 16-d embeddings) with its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = Path(out_dir)
    write_clip_tokenizer(out)
    vocab_size = len(json.loads((out / "vocab.json").read_text(encoding="utf-8")))
    text = dict(TOWER, vocab_size=vocab_size, max_position_embeddings=77, pad_token_id=0,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1)
    config = CLIPConfig(text_config=text, vision_config=dict(TOWER, image_size=IMAGE_SIZE, patch_size=8),
                        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer.from_pretrained(out)).save_pretrained(out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random CLIP model + processor folder.")
    parser.add_argument("out_dir", type=Path, help="folder to write into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info("wrote tiny CLIP to %s", build_tiny_clip(args.out_dir, args.seed))


if __name__ == "__main__":
    main()
