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

from models.bases.spec import SPATIAL, TEMPORAL
from utils.errors import UserError

BLOCK_LINEARS = {
    "attn1": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"),
    "attn2": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    "ffn": ("ffn.net.0.proj", "ffn.net.2"),
}
BLOCK_ORDER = tuple(linear for group in BLOCK_LINEARS.values() for linear in group)  # registration order
NAMES = {**BLOCK_LINEARS, **{linear: (linear,) for linear in BLOCK_ORDER}}
DEFAULT_LORA_LAYERS = {SPATIAL: ("attn1", "ffn"), TEMPORAL: ("attn1",)}
CHOICE_ATTR = "motiondirector_lora_layers"  # set on the transformer by WanBase.load


def layer_choice(option) -> dict[str, tuple[str, ...]]:
    """`lora_layers` ({path: [names]}, paths left out take the default) -> {path: block linears}."""
    option = {} if option is None else option
    if not isinstance(option, dict) or not set(option) <= {SPATIAL, TEMPORAL}:
        raise UserError(f"lora_layers must map spatial and/or temporal to layer lists, e.g. "
                        f"{{spatial: [attn1, ffn], temporal: [attn1]}}; got {option!r}")
    choice = {}
    for path in (SPATIAL, TEMPORAL):
        names = option.get(path, DEFAULT_LORA_LAYERS[path])
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in NAMES]
        if not names or unknown:
            raise UserError(f"lora_layers.{path}: {unknown[0] if unknown else 'an empty list'} is not a Wan block "
                            f"layer; use attn1, attn2, ffn or single linears such as attn1.to_q, ffn.net.2")
        chosen = {linear for n in names for linear in NAMES[n]}
        choice[path] = tuple(linear for linear in BLOCK_ORDER if linear in chosen)
    return choice


def set_layer_choice(transformer: torch.nn.Module, option) -> None:
    """Record the choice on the transformer: `lora_targets` is asked with the denoiser alone."""
    setattr(transformer, CHOICE_ATTR, layer_choice(option))


def chosen_layers(transformer: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    return getattr(transformer, CHOICE_ATTR, None) or layer_choice(None)


def targets(transformer: torch.nn.Module, linears: tuple[str, ...]) -> list[str]:
    """Full names of `linears` in every block, in registration order."""
    return [f"blocks.{i}.{linear}" for i in range(len(transformer.blocks)) for linear in BLOCK_ORDER
            if linear in linears]


def targets_of_file(transformer: torch.nn.Module, path: str, file: Path) -> list[str] | None:
    """The layers one of our adapter files names (its `lora_config` metadata), checked to be Wan
    block linears of this transformer; None for a file without that metadata."""
    from models.lora_io import read_lora_config

    config = read_lora_config(Path(file))
    if not config:
        return None
    allowed = targets(transformer, BLOCK_ORDER)
    unknown = sorted(set(config["target_modules"]) - set(allowed))
    if unknown:
        raise UserError(f"{file}: layer {unknown[0]} is not a LoRA layer of this Wan transformer "
                        f"(the {path} LoRA was trained on another base model)")
    named = set(config["target_modules"])
    return [name for name in allowed if name in named]
