"""Bit-identical speed patches of stock diffusers and peft layers (tested equal to the stock ones).

Each one swaps a module's class for a thin subclass, so weights, state-dict keys and adapter
keys stay exactly the stock ones; anything outside the plain case takes the stock forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from peft.tuners.lora.layer import Linear as PeftLoraLinear


class CachedDtype:
    """A mixin for a diffusers model whose `dtype` is looked up once instead of on every call.

    diffusers' `ModelMixin.dtype` walks every submodule looking for casting hooks (2-5 ms on the
    tiny model with LoRA, 12 ms on ZeroScope); a UNet asks for it in every forward and sampling
    twice more per step. `.to()`, `.half()`, `.float()` (all through `_apply`) drop the cache.
    """

    @property
    def dtype(self) -> torch.dtype:
        cached = self.__dict__.get("_cached_dtype")
        if cached is None:
            cached = self.__dict__["_cached_dtype"] = super().dtype
        return cached

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_cached_dtype", None)
        return super()._apply(fn, *args, **kwargs)


_CACHED_DTYPE_CLASSES: dict[type, type] = {}


def cache_dtype(model: torch.nn.Module) -> torch.nn.Module:
    """Give a model the CachedDtype `dtype` (in place; same weights and keys; idempotent)."""
    cls = type(model)
    if issubclass(cls, CachedDtype):
        return model
    if cls not in _CACHED_DTYPE_CLASSES:
        _CACHED_DTYPE_CLASSES[cls] = type(f"CachedDtype{cls.__name__}", (CachedDtype, cls), {})
    model.__class__ = _CACHED_DTYPE_CLASSES[cls]
    return model


class LeanAttention(Attention):
    """The stock Attention, minus a per-call `inspect.signature` of its processor.

    diffusers' `Attention.forward` inspects the processor's signature on every call to filter
    `cross_attention_kwargs` (26 attention calls per tiny training step, ~1.5 ms). Without such
    kwargs, which the UNets never pass, the filter has nothing to do and we call the processor
    directly; with them the stock forward runs.
    """

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **cross_attention_kwargs):
        if cross_attention_kwargs:
            return super().forward(hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs)
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask)


def lean_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Make every stock Attention a LeanAttention (in place; same weights, keys and processors)."""
    for module in model.modules():
        if type(module) is Attention:
            module.__class__ = LeanAttention
    return model


class LeanSdpaProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, minus three no-ops per call in the plain case the UNets run.

    The stock processor divides the output by `rescale_output_factor` (1.0: one more op and
    autograd node, forward and backward), casts it to the dtype it has and calls the p = 0
    output dropout module. Skipping them leaves every value bit-identical (tested); anything
    else (masks, norms, 4-D input, residuals, a real rescale or dropout) takes the stock path.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if (args or kwargs or attention_mask is not None or hidden_states.ndim != 3 or not _is_plain(attn)
                or (encoder_hidden_states is not None and attn.norm_cross)):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, heads = context.shape[0], attn.heads
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        hidden = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
        return attn.to_out[0](hidden.transpose(1, 2).reshape(batch, -1, heads * head_dim))


def _is_plain(attn: Attention) -> bool:
    """No norms, residual or rescale, and an output projection followed by a p = 0 dropout."""
    return (attn.spatial_norm is None and attn.group_norm is None and attn.norm_q is None and attn.norm_k is None
            and not attn.residual_connection and attn.rescale_output_factor == 1.0
            and len(attn.to_out) == 2 and not attn.to_out[1].p)


class LeanLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear, with a short forward for the case we run: plain LoRA, unmerged.

    peft's forward spends ~30 us of Python per call on cases we never use (per-sample adapter
    names, DoRA and other variants, merged weights) and four submodule calls; a tiny training
    step makes ~100 such calls. This path does the same ops in the same order, minus a multiply
    by a LoRA scale of 1 (our alpha = rank) forward and backward, so the results are
    bit-identical (tests); anything else takes peft's own forward. It reads the weights of
    lora_A/lora_B directly: code that patches their forward must put peft's class back first.

    Under autocast the LoRA branch runs in autocast's compute dtype, as the base linear does: its
    input is not cast to the float32 LoRA weights first (peft does: a float32 copy of every LoRA
    input, its dropout mask drawn in float32, then autocast casts it back for the matmul); the
    float32 weights are the master copy autocast casts for each matmul. Without autocast (float32
    training) nothing changes.
    """

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or self.disable_adapters or self.merged or self.lora_variant:
            return super().forward(x, *args, **kwargs)
        modules = self._modules  # direct lookups: nn.Module.__getattr__ costs ~1 us each
        base = modules["base_layer"]
        result = F.linear(x, base.weight, base.bias) if _is_plain_linear(base) else base(x)
        result_dtype = result.dtype
        compute_dtype = autocast_dtype(x.device.type) if x.is_floating_point() else None
        lora_A, lora_B, dropouts = (modules[k]._modules for k in ("lora_A", "lora_B", "lora_dropout"))
        for name in self.active_adapters:
            down = lora_A.get(name)
            if down is None:
                continue
            if compute_dtype is not None:
                x = x if x.dtype == compute_dtype else x.to(compute_dtype)
            elif x.dtype != down.weight.dtype:
                x = self._cast_input_dtype(x, down.weight.dtype)
            dropout = dropouts[name]
            hidden = F.dropout(x, dropout.p, dropout.training) if isinstance(dropout, torch.nn.Dropout) else x
            update = F.linear(F.linear(hidden, down.weight), lora_B[name].weight)
            scale = self.scaling[name]
            result = result + (update if scale == 1 else update * scale)  # x * 1.0 is x: skip the op
        return result if result.dtype == result_dtype else result.to(result_dtype)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes matmuls in on `device_type`, or None when it is off.
    (benchmarks/estimate.py replaces this while it emulates CUDA autocast on meta tensors.)"""
    if device_type not in ("cuda", "cpu", "xpu", "mps") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _is_plain_linear(module: torch.nn.Module) -> bool:
    """An nn.Linear whose call is exactly F.linear: no hooks, no patched forward."""
    return (type(module) is torch.nn.Linear and not module._forward_hooks and not module._forward_pre_hooks
            and "forward" not in module.__dict__)


def lean_lora(model: torch.nn.Module) -> None:
    """Give every peft LoRA Linear the short forward (in place; same weights and keys)."""
    for module in model.modules():
        if type(module) is PeftLoraLinear:
            module.__class__ = LeanLoraLinear
