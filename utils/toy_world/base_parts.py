"""The toy world's base model parts that pretraining and the probes share: the ZeroScope-architecture
configs, the whole-word tokenizer and frozen random text encoder, the pipeline folder's static files,
clip latents and caption states.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.bases.tiny_parts import TINY_TEXT_ENCODER, save_clip_text_encoder, write_clip_tokenizer, write_json
from models.bases.unet_base import clip_text_states
from models.bases.zeroscope import MODEL_INDEX, SCHEDULER_CONFIG, ZeroScopeBase
from utils.toy_world import world

BASE = ZeroScopeBase()

# Whole-word tokens for every word of the captions, so a prompt is a handful of token ids. Fixed
# (v1's list): the token ids, and so the seeded text encoder's states, stay those of the shipped bases.
WORDS = ("a", "blue", "bouncing", "circle", "down", "green", "growing", "in", "left", "moving", "red", "right",
         "square", "standing", "still", "triangle", "up", "yellow", "zigzagging")

UNET_CONFIG = dict(
    sample_size=world.SIZE // 8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 64),  # >= 32: TemporalConvLayer uses GroupNorm(32, C)
    layers_per_block=1,
    norm_num_groups=32,
    cross_attention_dim=TINY_TEXT_ENCODER["hidden_size"],
    attention_head_dim=8,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,  # 3 downsamples: scale factor 8, as ZeroScope
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=16,
    latent_channels=4,
    sample_size=world.SIZE,
)


def write_static_parts(out: Path, seed: int, scheduler_config: dict = SCHEDULER_CONFIG) -> None:
    """Tokenizer, frozen random text encoder, scheduler and model index (no training needed)."""
    write_json(out / "scheduler" / "scheduler_config.json", scheduler_config)
    if (out / "text_encoder" / "model.safetensors").is_file():
        return
    write_clip_tokenizer(out / "tokenizer", WORDS)
    vocab = json.loads((out / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    with torch.random.fork_rng(devices=[]):
        save_clip_text_encoder(out / "text_encoder", seed + 3, len(vocab))


def mark_complete(out: Path) -> None:
    write_json(out / "model_index.json", MODEL_INDEX)


@torch.no_grad()
def clip_latents(vae, specs: list[world.ClipSpec]) -> torch.Tensor:
    """Scaled VAE latent means (N, 4, F, h, w) of the rendered clips of `specs`."""
    clips = np.stack([world.render(s) for s in specs])  # (N, F, H, W, 3)
    pixels = torch.from_numpy(clips).flatten(0, 1).permute(0, 3, 1, 2).float() / 127.5 - 1
    mean = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    return mean.unflatten(0, (len(specs), world.FRAMES)).permute(0, 2, 1, 3, 4)


def caption_embeddings(out: Path, captions: list[str]) -> torch.Tensor:
    """(len(captions) + 1, 77, D): the frozen text encoder's states; the last row is the empty prompt."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder").eval()
    return clip_text_states(tokenizer, text_encoder, list(captions) + [""])


def diffusion_target(scheduler, latents, noise, timesteps) -> torch.Tensor:
    """The UNet's training target under `scheduler` (epsilon or v)."""
    return BASE.target(scheduler, latents, noise, timesteps)
