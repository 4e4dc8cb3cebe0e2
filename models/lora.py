"""Dual-path LoRA (spatial + temporal) on any base's denoiser, through peft's functional API.

Which linears each path adapts is the base's fact (`VideoBase.lora_targets`): callers pass the
target names. Each path is one or more named peft adapters ("temporal", "spatial", or
"spatial_<i>" for one per training video); several adapters may share a layer.
"""

import warnings
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.functional import inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from models.bases.spec import SPATIAL, TEMPORAL
from models.fast_layers import lean_lora

__all__ = ["SPATIAL", "TEMPORAL", "activate", "activate_fast", "adapter_names", "adapter_parameters",
           "add_adapter", "layer_sides", "lora_layers", "path_of", "set_scale", "set_trainable", "spatial_adapter_names"]


def path_of(adapter_name: str) -> str:
    return TEMPORAL if adapter_name == TEMPORAL else SPATIAL


def spatial_adapter_names(count: int) -> list[str]:
    return [SPATIAL] if count == 1 else [f"{SPATIAL}_{i}" for i in range(count)]


def add_adapter(
    model: torch.nn.Module,
    adapter_name: str,
    targets: list[str],
    rank: int | dict[str, int],
    dropout: float = 0.0,
    dtype: torch.dtype | None = None,
) -> None:
    """Inject one adapter on the layers (linears, or convs) named `targets` (the base's targets of its path).

    `rank` is one int (capped per layer at min(in, out) like the original; a conv's channels) or a per-layer dict.
    lora_alpha equals the rank so the LoRA term is scale * up(down(x)), as in the original;
    "gaussian" init is down ~ N(0, 1/r), up = 0. `dtype` is the adapter weights' dtype (None:
    peft's, the base layer's): float32 under a half-precision model keeps the fresh draws exact,
    the same numbers an fp32 model gets from the same seed.
    """
    ranks = rank if isinstance(rank, dict) else _capped_ranks(model, targets, rank)
    default_rank = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {f"^{name}$": r for name, r in ranks.items() if r != default_rank}
    config = LoraConfig(
        r=default_rank,
        lora_alpha=default_rank,
        target_modules=targets,
        lora_dropout=dropout,
        init_lora_weights="gaussian",
        rank_pattern=pattern,
        alpha_pattern=pattern,
    )
    with warnings.catch_warnings(), base_weights_as(model, targets, dtype):
        warnings.simplefilter("ignore", UserWarning)  # peft warns that adapters now share the model: intended
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    lean_lora(model)
    # Injecting re-activates only the new adapter; keep every adapter present usable.
    activate(model, adapter_names(model))


@contextmanager
def base_weights_as(model: torch.nn.Module, targets: list[str], dtype: torch.dtype | None):
    """The targets' base weights in `dtype` for the block (None: unchanged), then back.

    peft draws a new adapter's weights in float32, then casts them to its base layer's dtype:
    under a half-precision model that rounds them (for training, back to float32 afterwards).
    Half -> float32 -> half is exact, so the frozen weights come back bit for bit.
    """
    modules = dict(model.named_modules())
    bases = [_base_linear(modules[name]) for name in targets] if dtype is not None else []
    changed = [(base, base.weight.dtype) for base in bases if base.weight.dtype != dtype]
    for base, _ in changed:
        base.weight.data = base.weight.data.to(dtype)
    try:
        yield
    finally:
        for base, original in changed:
            base.weight.data = base.weight.data.to(original)


def _base_linear(layer: torch.nn.Module) -> torch.nn.Module:
    return layer.get_base_layer() if isinstance(layer, LoraLayer) else layer


def _capped_ranks(model, targets, rank):
    modules = dict(model.named_modules())
    return {name: min(rank, *layer_sides(modules[name])) for name in targets}


def layer_sides(layer: torch.nn.Module) -> tuple[int, int]:
    """(inputs, outputs) of a LoRA target: a linear's features, a conv's channels."""
    base = _base_linear(layer)
    if isinstance(base, torch.nn.Linear):
        return base.in_features, base.out_features
    return base.in_channels, base.out_channels


def lora_layers(model: torch.nn.Module) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def adapter_names(model: torch.nn.Module) -> list[str]:
    names = set()
    for layer in lora_layers(model):
        names.update(layer.lora_A.keys())
    return sorted(names)


def activate(model: torch.nn.Module, names: list[str], layers: list[LoraLayer] | None = None) -> None:
    """Make exactly `names` active (inactive adapters cost nothing in the forward).

    All adapters are left frozen: trainers then pick what learns with `set_trainable`.
    """
    for layer in layers if layers is not None else lora_layers(model):
        layer.set_adapter(list(names), inference_mode=True)


def activate_fast(layers: list[LoraLayer], names: list[str]) -> None:
    """`activate` for the training hot path: sets only the active list.

    peft's `set_adapter` also rewrites requires_grad of every adapter in every layer (about 7 ms
    per call on the tiny model, twice per step); the trainer sets trainability itself.
    """
    names = list(names)
    for layer in layers:
        layer._active_adapter = names


def set_scale(model: torch.nn.Module, adapter_name: str, scale: float) -> None:
    """Multiply an adapter's LoRA term by `scale` (1 = as trained)."""
    for layer in lora_layers(model):
        layer.set_scale(adapter_name, scale)


def adapter_parameters(model: torch.nn.Module, adapter_name: str) -> list[torch.nn.Parameter]:
    suffixes = (f".{adapter_name}.weight",)
    return [p for n, p in model.named_parameters() if "lora_" in n and n.endswith(suffixes)]


def set_trainable(params_by_adapter: dict[str, list[torch.nn.Parameter]], trainable: list[str]) -> None:
    """requires_grad on the adapters in `trainable`, off on every other adapter."""
    for name, params in params_by_adapter.items():
        for p in params:
            p.requires_grad_(name in trainable)
