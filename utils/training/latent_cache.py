"""Latents (and DDIM inversion noise) encoded once before training, in the original's file layout.

`cached_latents/cached_<i>.pt` holds the clip's batch dict with the batch dimension stripped:
`latents` (C, f, h, w), `prompt_ids`, `text_prompt`, `dataset`, `inversion_noise` when the
validation noise prior is > 0, `pixel_values` when horizontal flips need them, and
`frame_latents` (C, F, h, w: each frame encoded alone) for a base whose VAE mixes frames.
Folders written by the original code load too.
"""

import logging
import os
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from utils.errors import UserError
from utils.io.torch_files import load_plain

logger = logging.getLogger(__name__)
_CACHE_RE = re.compile(r"^cached_(\d+)\.pt$")


def cache_dataset(dataset, components, out_dir: Path, with_inversion: bool, keep_pixels: bool, show=True) -> Path:
    """Encode every clip of `dataset` into `out_dir` (atomically per file); returns the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(dataset)), desc="Caching latents", disable=not show):
        item = dataset[i]
        entry = encode_clip(item, components, with_inversion)
        if keep_pixels:
            entry["pixel_values"] = item["pixel_values"]
        tmp = out_dir / f"cached_{i}.pt.tmp"
        torch.save(entry, tmp)
        os.replace(tmp, out_dir / f"cached_{i}.pt")
    return out_dir


def encode_clip(item: dict, components, with_inversion: bool) -> dict:
    pixels = item["pixel_values"][None]
    latents = components.encode_video(pixels)[0].float().cpu()
    entry = {
        "latents": latents,
        "prompt_ids": components.tokenize([item["prompt"]])[0],
        "text_prompt": item["prompt"],
        "dataset": item.get("dataset", ""),
    }
    if not components.base.frames_are_images:
        entry["frame_latents"] = components.encode_frames(pixels)[0].float().cpu()
    if with_inversion:
        entry["inversion_noise"] = invert_clip(latents, components)
    return entry


def invert_clip(latents: torch.Tensor, components) -> torch.Tensor:
    """(C, f, h, w) latents -> their inversion with the empty prompt (the base's: 50 DDIM steps for
    the UNets), denoiser in eval.

    The denoiser is used as it is (at training its LoRAs are still zero; at inference the original
    inverted through its pipeline, i.e. with the loaded LoRA).
    """
    denoiser = components.denoiser
    was_training = denoiser.training
    denoiser.eval()  # temporal convs use dropout
    empty = components.encode_prompts([""]).to(denoiser.device, denoiser.dtype)
    inverted = components.base.invert(components, latents[None].to(denoiser.device, torch.float32), empty,
                                      components.base.inversion_steps)
    denoiser.train(was_training)
    return inverted[0].float().cpu()


def cached_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"cached latents folder not found: {folder} (unset cached_latent_dir to encode the data)")
    files = [p for p in folder.iterdir() if _CACHE_RE.match(p.name)]
    if not files:
        raise UserError(f"no cached_<i>.pt files in {folder}; unset cached_latent_dir to encode the data again")
    return sorted(files, key=lambda p: int(_CACHE_RE.match(p.name)[1]))


def load_cached_file(file: Path, how_to_fix: str) -> dict:
    """One cached clip (ours or the original's), read without running code: tensors and plain values."""
    entry = load_plain(file, "cached latents", how_to_fix)
    if not isinstance(entry, dict) or "latents" not in entry:
        raise UserError(f"{file} holds no 'latents': not a cached_latents file of a training run; {how_to_fix}")
    return entry


def load_cached(folder: Path) -> list[dict]:
    """Every cached clip, in memory (they are small), as training items."""
    items = []
    for index, file in enumerate(cached_files(folder)):
        entry = load_cached_file(file, "delete the folder to re-encode")
        entry["prompt"] = entry.get("text_prompt", "")
        entry["index"] = index
        items.append(entry)
    return items
