"""Which layers of ZeroScope's UNet3D each LoRA path adapts (config key `lora_layers`).

    lora_layers: {temporal: [attn1, attn2, ff, temp_convs]}

Names: `attn1`, `attn2`, `ff` are the linears of that part in every transformer of the path
(spatial: each Transformer2DModel; temporal: each TransformerTemporalModel, `transformer_in`
included); `temp_convs` (temporal only) is the Conv3d layers of every temporal conv block, whose
kernel spans 3 frames.

Default: the original MotionDirector's layers (spatial attn1 + ff; temporal attn1 + attn2 + ff),
so released weights load unchanged. Why `temp_convs` is offered: the temporal transformers carry
no frame positions (UNet3D adds none), so their LoRA can reweight how frames mix but cannot tell
frame 3 from frame 4; a motion that alternates frame by frame (a zig-zag) needs a layer that sees
frame order, and the temporal convs do (docs/toy_world.md, sweep G). The spatial path runs single
frames, where the temporal convs are skipped, so it takes transformer layers only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from models.bases import layer_choice as layer_option
from models.bases.spec import SPATIAL, TEMPORAL
from models.bases.unet_base import layers_inside

TRANSFORMERS = {SPATIAL: Transformer2DModel, TEMPORAL: TransformerTemporalModel}
TRANSFORMER_PARTS = ("attn1", "attn2", "ff")
TEMPORAL_CONVS = "temp_convs"
ACCEPTED = {SPATIAL: TRANSFORMER_PARTS, TEMPORAL: (*TRANSFORMER_PARTS, TEMPORAL_CONVS)}
DEFAULT_LORA_LAYERS = {SPATIAL: ("attn1", "ff"), TEMPORAL: ("attn1", "attn2", "ff")}


def layer_choice(option) -> dict[str, tuple[str, ...]]:
    """`lora_layers` ({path: [names]}, paths left out take the default) -> {path: names}."""
    return layer_option.parse(option, ACCEPTED, DEFAULT_LORA_LAYERS, lambda path: (
        f"is not a ZeroScope {path} layer; use {', '.join(ACCEPTED[path])}"
        + ("" if path == TEMPORAL else " (the spatial path sees single frames, where temporal convs are skipped)")))


def set_layer_choice(unet: torch.nn.Module, option) -> None:
    layer_option.record(unet, layer_choice(option))


def targets(unet: torch.nn.Module, path: str, names: tuple[str, ...] | None = None) -> list[str]:
    """Full names of the layers `names` of `path` (default: the recorded choice), in registration
    order: the order of the original's saved lists (diffusers registers up_blocks before mid_block)."""
    names = layer_option.recorded(unet, DEFAULT_LORA_LAYERS)[path] if names is None else names
    parts = tuple(name for name in names if name != TEMPORAL_CONVS)
    chosen = set(layers_inside(unet, TRANSFORMERS[path], parts))  # no parts: none
    if TEMPORAL_CONVS in names:  # conv1.2, conv2.3, ... of every temporal conv block
        chosen.update(layers_inside(unet, TemporalConvLayer, ("conv",), torch.nn.Conv3d))
    return [name for name, _ in unet.named_modules() if name in chosen]


def targets_of_file(unet: torch.nn.Module, path: str, file: Path) -> list[str] | None:
    """The layers one of our adapter files names, checked to be `path` layers of this UNet; None
    for a file without `lora_config` metadata (the original's .pt lists)."""
    return layer_option.targets_of_file(file, targets(unet, path, ACCEPTED[path]), path, "UNet3D")

