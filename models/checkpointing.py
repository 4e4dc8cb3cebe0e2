"""Gradient checkpointing over the modules a base names (`VideoBase.checkpoint_targets`).

Each target module gets an instance `forward` that checkpoints its class's forward, so module
names and adapter keys are unchanged (diffusers' UNet3D does not support checkpointing itself,
and torch.distributed's `checkpoint_wrapper` makes peft miss most adapter keys). Non-reentrant
checkpointing restores the RNG state, so dropout in the recomputation matches the first pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
import torch.utils.checkpoint


def enable_gradient_checkpointing(model: torch.nn.Module, targets: list[torch.nn.Module]) -> None:
    """Recompute the activations of `targets` in the backward pass instead of storing them."""
    disable_gradient_checkpointing(model)
    for module in targets:
        module.forward = partial(_checkpointed_forward, module)
        module._md_checkpointed = True


def disable_gradient_checkpointing(model: torch.nn.Module) -> None:
    for module in model.modules():
        if getattr(module, "_md_checkpointed", False):
            del module.forward  # back to the class's forward
            module._md_checkpointed = False


def checkpointed_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if getattr(m, "_md_checkpointed", False)]


@contextmanager
def checkpointing_paused(model: torch.nn.Module):
    """No recomputation inside (sampling needs none); the same modules checkpointed again after."""
    targets = checkpointed_modules(model)
    disable_gradient_checkpointing(model)
    try:
        yield
    finally:
        if targets:
            enable_gradient_checkpointing(model, targets)


def _checkpointed_forward(module: torch.nn.Module, *args, **kwargs):
    forward = partial(type(module).forward, module)  # looked up per call: class swaps stay effective
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
