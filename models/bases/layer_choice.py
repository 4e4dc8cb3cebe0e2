"""The config key `lora_layers` ({path: [layer names]}), for the bases whose LoRA layers are chosen.

Each such base states the names each path accepts and its defaults; the choice is checked here,
recorded on the denoiser when the base loads it (`lora_targets` is asked with the denoiser alone),
and read back from an adapter file's `lora_config` metadata when one is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from models.bases.spec import SPATIAL, TEMPORAL
from utils.errors import UserError

CHOICE_ATTR = "motiondirector_lora_layers"  # set on the denoiser by a base's `load`


def parse(option, accepted: dict[str, tuple[str, ...]], defaults: dict[str, tuple[str, ...]],
          unknown_hint: Callable[[str], str]) -> dict[str, tuple[str, ...]]:
    """`lora_layers` (paths left out take `defaults`) -> {path: chosen names}, each checked against
    `accepted[path]`; `unknown_hint(path)` ends the message for a name the path does not accept."""
    option = {} if option is None else option
    if not isinstance(option, dict) or not set(option) <= {SPATIAL, TEMPORAL}:
        example = {path: list(names) for path, names in defaults.items()}
        raise UserError(f"lora_layers must map spatial and/or temporal to layer lists, e.g. {example}; "
                        f"got {option!r}")
    choice = {}
    for path in (SPATIAL, TEMPORAL):
        names = option.get(path, defaults[path])
        names = [names] if isinstance(names, str) else list(names)
        unknown = [name for name in names if name not in accepted[path]]
        if not names or unknown:
            raise UserError(f"lora_layers.{path}: {unknown[0] if unknown else 'an empty list'} {unknown_hint(path)}")
        choice[path] = tuple(names)
    return choice


def record(denoiser: torch.nn.Module, choice: dict[str, tuple[str, ...]]) -> None:
    setattr(denoiser, CHOICE_ATTR, choice)


def recorded(denoiser: torch.nn.Module, defaults: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The choice `record` left on the denoiser, else `defaults` (a denoiser built without options)."""
    return getattr(denoiser, CHOICE_ATTR, None) or dict(defaults)


def targets_of_file(file: Path, allowed: list[str], path: str, label: str) -> list[str] | None:
    """The layers one of our adapter files names (its `lora_config` metadata), in the order of
    `allowed` (every layer the path may hold) and checked to be among them; None for a file without
    that metadata (the original's .pt lists)."""
    from models.lora_io import read_lora_config

    config = read_lora_config(Path(file))
    if not config:
        return None
    named = set(config["target_modules"])
    unknown = sorted(named - set(allowed))
    if unknown:
        raise UserError(f"{file}: layer {unknown[0]} is not a {path} LoRA layer of this {label} "
                        f"(trained on another base model, or for the other path)")
    return [name for name in allowed if name in named]
