"""Which linears of Wan's transformer blocks each LoRA path adapts (config key `lora_layers`).

A Wan block has self-attention `attn1` (to_q, to_k, to_v, to_out.0), cross-attention to the text
`attn2` (the same four) and a feed-forward `ffn` (ffn.net.0.proj, ffn.net.2). A choice names
groups (`attn1`, `attn2`, `ffn`) or single linears (`attn1.to_q`, `ffn.net.2`, ...) per path:

    lora_layers: {spatial: [attn1, ffn], temporal: [attn1]}

Default, and why: only self-attention mixes tokens, so only `attn1` can relate one frame to
another, i.e. express motion; `attn2` and `ffn` act on each token alone, identically in every
frame: they can change what things look like, not how they move. So the temporal path holds
`attn1` only, and has no per-token capacity in which to store the clip's appearance. The spatial
path (single frames, appearance) holds `attn1` and `ffn`, the layers of the original
MotionDirector's spatial path (self-attention and feed-forward, never cross-attention: the text's
binding to appearance stays the base model's, so new prompts still change the subject).
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.bases import layer_choice as layer_option
from models.bases.spec import SPATIAL, TEMPORAL

BLOCK_LINEARS = {
    "attn1": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"),
    "attn2": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    "ffn": ("ffn.net.0.proj", "ffn.net.2"),
}
BLOCK_ORDER = tuple(linear for group in BLOCK_LINEARS.values() for linear in group)  # registration order
NAMES = {**BLOCK_LINEARS, **{linear: (linear,) for linear in BLOCK_ORDER}}
DEFAULT_LORA_LAYERS = {SPATIAL: ("attn1", "ffn"), TEMPORAL: ("attn1",)}


def layer_choice(option) -> dict[str, tuple[str, ...]]:
    """`lora_layers` ({path: [names]}, paths left out take the default) -> {path: block linears}."""
    accepted = {SPATIAL: tuple(NAMES), TEMPORAL: tuple(NAMES)}
    choice = layer_option.parse(option, accepted, DEFAULT_LORA_LAYERS, lambda path: (
        "is not a Wan block layer; use attn1, attn2, ffn or single linears such as attn1.to_q, ffn.net.2"))
    chosen = {path: {linear for name in names for linear in NAMES[name]} for path, names in choice.items()}
    return {path: tuple(linear for linear in BLOCK_ORDER if linear in linears) for path, linears in chosen.items()}


def set_layer_choice(transformer: torch.nn.Module, option) -> None:
    """Record the choice on the transformer: `lora_targets` is asked with the denoiser alone."""
    layer_option.record(transformer, layer_choice(option))


def chosen_layers(transformer: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    return layer_option.recorded(transformer, layer_choice(None))


def targets(transformer: torch.nn.Module, linears: tuple[str, ...]) -> list[str]:
    """Full names of `linears` in every block, in registration order."""
    return [f"blocks.{i}.{linear}" for i in range(len(transformer.blocks)) for linear in BLOCK_ORDER
            if linear in linears]


def targets_of_file(transformer: torch.nn.Module, path: str, file: Path) -> list[str] | None:
    """The layers one of our adapter files names (its `lora_config` metadata), checked to be Wan
    block linears of this transformer; None for a file without that metadata."""
    return layer_option.targets_of_file(file, targets(transformer, BLOCK_ORDER), path, "Wan transformer")
