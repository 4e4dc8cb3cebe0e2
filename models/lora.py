"""Dual-path LoRA (spatial + temporal) on a UNet3D through peft's functional API.

Spatial path: self-attention (attn1) and feed-forward linears of every block inside every
Transformer2DModel. Temporal path: attn1, attn2 and feed-forward linears inside every
TransformerTemporalModel, `transformer_in` included. Each path is one or more named peft
adapters ("temporal", "spatial" or "spatial_<i>" for one per training video).
"""

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from peft import LoraConfig
from peft.functional import inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as PeftLoraLinear

TEMPORAL = "temporal"
SPATIAL = "spatial"


@dataclass(frozen=True)
class PathSpec:
    parent: type  # the block class whose linears get LoRA
    name_keys: tuple  # a linear is targeted when its name inside the parent contains one of these


PATHS = {
    SPATIAL: PathSpec(Transformer2DModel, ("attn1", "ff")),
    TEMPORAL: PathSpec(TransformerTemporalModel, ("attn1", "attn2", "ff")),
}


def path_of(adapter_name: str) -> str:
    return TEMPORAL if adapter_name == TEMPORAL else SPATIAL


def spatial_adapter_names(count: int) -> list[str]:
    return [SPATIAL] if count == 1 else [f"{SPATIAL}_{i}" for i in range(count)]


def lora_target_names(unet: torch.nn.Module, path: str) -> list[str]:
    """Full names of the linears a path adapts, in UNet registration order.

    This is the order of the original's saved lists (up_blocks come before mid_block in diffusers).
    """
    spec = PATHS[path]
    names = []
    for parent_name, parent in unet.named_modules():
        if not isinstance(parent, spec.parent):
            continue
        for child_name, child in parent.named_modules():
            if _is_base_linear(child_name, child) and any(k in child_name for k in spec.name_keys):
                names.append(f"{parent_name}.{child_name}")
    return names


def _is_base_linear(name: str, module: torch.nn.Module) -> bool:
    # After injection a target is a peft wrapper around `base_layer`; report the wrapper's name once.
    if isinstance(module, LoraLayer):
        return True
    return isinstance(module, torch.nn.Linear) and "lora_" not in name and "base_layer" not in name


def add_adapter(
    unet: torch.nn.Module,
    adapter_name: str,
    rank: int | dict[str, int],
    dropout: float = 0.0,
) -> None:
    """Inject one adapter on its path's targets.

    `rank` is one int (capped per layer at min(in, out) like the original) or a per-layer dict.
    lora_alpha equals the rank so the LoRA term is scale * up(down(x)), as in the original;
    "gaussian" init is down ~ N(0, 1/r), up = 0.
    """
    targets = lora_target_names(unet, path_of(adapter_name))
    ranks = rank if isinstance(rank, dict) else _capped_ranks(unet, targets, rank)
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
    with warnings.catch_warnings():  # peft warns that several adapters now share the model: intended
        warnings.simplefilter("ignore", UserWarning)
        inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    lean_lora(unet)
    # Injecting re-activates only the new adapter; keep every adapter present usable.
    activate(unet, adapter_names(unet))


class LeanLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear, with a short forward for the case we run: plain LoRA, unmerged.

    peft's forward spends ~30 us of Python per call on cases we never use (per-sample adapter
    names, DoRA and other variants, merged weights) and four submodule calls; a tiny training
    step makes ~100 such calls. This path does the same ops in the same order, minus a multiply
    by a LoRA scale of 1 (our alpha = rank) forward and backward, so the results are
    bit-identical (tests); anything else takes peft's own forward. It reads the weights of
    lora_A/lora_B directly: code that patches their forward must put peft's class back first.
    """

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or self.disable_adapters or self.merged or self.lora_variant:
            return super().forward(x, *args, **kwargs)
        modules = self._modules  # direct lookups: nn.Module.__getattr__ costs ~1 us each
        base = modules["base_layer"]
        result = F.linear(x, base.weight, base.bias) if _is_plain_linear(base) else base(x)
        result_dtype = result.dtype
        lora_A, lora_B, dropouts = (modules[k]._modules for k in ("lora_A", "lora_B", "lora_dropout"))
        for name in self.active_adapters:
            down = lora_A.get(name)
            if down is None:
                continue
            if x.dtype != down.weight.dtype:
                x = self._cast_input_dtype(x, down.weight.dtype)
            dropout = dropouts[name]
            hidden = F.dropout(x, dropout.p, dropout.training) if isinstance(dropout, torch.nn.Dropout) else x
            update = F.linear(F.linear(hidden, down.weight), lora_B[name].weight)
            scale = self.scaling[name]
            result = result + (update if scale == 1 else update * scale)  # x * 1.0 is x: skip the op
        return result if result.dtype == result_dtype else result.to(result_dtype)


def _is_plain_linear(module: torch.nn.Module) -> bool:
    """An nn.Linear whose call is exactly F.linear: no hooks, no patched forward."""
    return (type(module) is torch.nn.Linear and not module._forward_hooks and not module._forward_pre_hooks
            and "forward" not in module.__dict__)


def lean_lora(unet: torch.nn.Module) -> None:
    """Give every peft LoRA Linear the short forward (in place; same weights and keys)."""
    for module in unet.modules():
        if type(module) is PeftLoraLinear:
            module.__class__ = LeanLoraLinear


def _capped_ranks(unet, targets, rank):
    modules = dict(unet.named_modules())
    ranks = {}
    for name in targets:
        layer = modules[name]
        base = layer.get_base_layer() if isinstance(layer, LoraLayer) else layer
        ranks[name] = min(rank, base.in_features, base.out_features)
    return ranks


def lora_layers(unet: torch.nn.Module) -> list[LoraLayer]:
    return [m for m in unet.modules() if isinstance(m, LoraLayer)]


def adapter_names(unet: torch.nn.Module) -> list[str]:
    names = set()
    for layer in lora_layers(unet):
        names.update(layer.lora_A.keys())
    return sorted(names)


def activate(unet: torch.nn.Module, names: list[str], layers: list[LoraLayer] | None = None) -> None:
    """Make exactly `names` active (inactive adapters cost nothing in the forward).

    All adapters are left frozen: trainers then pick what learns with `set_trainable`.
    """
    for layer in layers if layers is not None else lora_layers(unet):
        layer.set_adapter(list(names), inference_mode=True)


def activate_fast(layers: list[LoraLayer], names: list[str]) -> None:
    """`activate` for the training hot path: sets only the active list.

    peft's `set_adapter` also rewrites requires_grad of every adapter in every layer (about 7 ms
    per call on the tiny model, twice per step); the trainer sets trainability itself.
    """
    names = list(names)
    for layer in layers:
        layer._active_adapter = names


def set_scale(unet: torch.nn.Module, adapter_name: str, scale: float) -> None:
    """Multiply an adapter's LoRA term by `scale` (1 = as trained)."""
    for layer in lora_layers(unet):
        layer.set_scale(adapter_name, scale)


def adapter_parameters(unet: torch.nn.Module, adapter_name: str) -> list[torch.nn.Parameter]:
    suffixes = (f".{adapter_name}.weight",)
    return [p for n, p in unet.named_parameters() if "lora_" in n and n.endswith(suffixes)]


def set_trainable(params_by_adapter: dict[str, list[torch.nn.Parameter]], trainable: list[str]) -> None:
    """requires_grad on the adapters in `trainable`, off on every other adapter."""
    for name, params in params_by_adapter.items():
        for p in params:
            p.requires_grad_(name in trainable)
