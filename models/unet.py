"""The stock diffusers UNet3DConditionModel, with the original MotionDirector single-frame rule.

When the UNet gets one frame, the original skips `transformer_in`, every temporal attention and
every temporal conv. (Its non-checkpointed path kept `mid_block.temp_convs[0]`, but every shipped
config trained with gradient checkpointing, whose blocks skip that conv too; the released spatial
LoRAs were trained through that forward.) We swap the temporal modules' classes for thin
subclasses: the weights and state-dict keys stay exactly the stock ones, and checkpointing never
changes the math.
"""

import logging
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import (
    TransformerTemporalModel,
    TransformerTemporalModelOutput,
)

logger = logging.getLogger(__name__)


class SingleFrameSkippingTransformer(TransformerTemporalModel):
    """A temporal transformer that is the identity on a one-frame clip."""

    def forward(self, hidden_states, *args, num_frames: int = 1, return_dict: bool = True, **kwargs):
        if num_frames == 1:
            return TransformerTemporalModelOutput(sample=hidden_states) if return_dict else (hidden_states,)
        return super().forward(hidden_states, *args, num_frames=num_frames, return_dict=return_dict, **kwargs)


class SingleFrameSkippingConv(TemporalConvLayer):
    """A temporal conv block that is the identity on a one-frame clip."""

    def forward(self, hidden_states: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        if num_frames == 1:
            return hidden_states
        return super().forward(hidden_states, num_frames=num_frames)


def apply_single_frame_rule(unet: torch.nn.Module) -> torch.nn.Module:
    """Give the UNet the original's single-frame forward (in place; returns the UNet)."""
    for module in unet.modules():
        if type(module) is TransformerTemporalModel:
            module.__class__ = SingleFrameSkippingTransformer
        elif type(module) is TemporalConvLayer:
            module.__class__ = SingleFrameSkippingConv
    return unet


class CachedDtypeUNet3D(UNet3DConditionModel):
    """The stock UNet, whose `dtype` is looked up once instead of on every call.

    diffusers' `ModelMixin.dtype` walks every submodule looking for casting hooks (2-5 ms on the
    tiny model with LoRA, more on ZeroScope); the UNet asks for it in every forward and sampling
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


def cache_dtype(unet: torch.nn.Module) -> torch.nn.Module:
    """Make a stock UNet3DConditionModel a CachedDtypeUNet3D (in place; same weights and keys)."""
    if type(unet) is UNet3DConditionModel:
        unet.__class__ = CachedDtypeUNet3D
    return unet


class LeanAttention(Attention):
    """The stock Attention, minus a per-call `inspect.signature` of its processor.

    diffusers' `Attention.forward` inspects the processor's signature on every call to filter
    `cross_attention_kwargs` (26 attention calls per tiny training step, ~1.5 ms). Without such
    kwargs, which the UNet3D never passes, the filter has nothing to do and we call the
    processor directly; with them the stock forward runs.
    """

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **cross_attention_kwargs):
        if cross_attention_kwargs:
            return super().forward(hidden_states, encoder_hidden_states, attention_mask, **cross_attention_kwargs)
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask)


class LeanSdpaProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, minus three no-ops per call in the plain case the UNet3D runs.

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


def lean_attention(unet: torch.nn.Module) -> torch.nn.Module:
    """Make every stock Attention a LeanAttention (in place; same weights, keys and processors)."""
    for module in unet.modules():
        if type(module) is Attention:
            module.__class__ = LeanAttention
    return unet


def prepare_unet(unet: UNet3DConditionModel) -> UNet3DConditionModel:
    """A stock UNet3D as we run it: the single-frame rule, the cached dtype, lean attention calls."""
    return cache_dtype(apply_single_frame_rule(lean_attention(unet)))


def load_unet(model_path: str, dtype: torch.dtype = torch.float32) -> UNet3DConditionModel:
    """Load the pipeline's UNet (local diffusers folder or hub id), prepared as `prepare_unet` says."""
    unet = UNet3DConditionModel.from_pretrained(model_path, subfolder="unet", torch_dtype=dtype)
    return prepare_unet(unet)


# Where activations are recomputed in the backward pass. "block": each down/mid/up block (and
# transformer_in) keeps only its inputs; "fine": each resnet, temporal conv, spatial and temporal
# transformer and resampler does, as the original MotionDirector's UNet did. Fine is the default:
# predicted for ZeroScope at 384x384x16 fp16 (benchmarks/estimate.py), 6.2 GB peak against 14.3 GB
# per block, for fewer recomputed FLOPs (a block's recomputation also reruns what fine keeps).
CHECKPOINT_GRANULARITIES = ("block", "fine")
DEFAULT_GRANULARITY = "fine"
_FINE_PARTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "downsamplers", "upsamplers")


def checkpoint_targets(unet: UNet3DConditionModel, granularity: str = DEFAULT_GRANULARITY) -> list[torch.nn.Module]:
    """The modules whose forward is recomputed at this granularity."""
    if granularity not in CHECKPOINT_GRANULARITIES:
        raise ValueError(f"gradient checkpointing granularity must be one of {CHECKPOINT_GRANULARITIES}, "
                         f"got {granularity!r}")
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    if granularity == "block":
        return [unet.transformer_in, *blocks]
    parts = [m for block in blocks for part in _FINE_PARTS for m in (getattr(block, part, None) or [])]
    return [unet.transformer_in, *parts]


def enable_gradient_checkpointing(unet: UNet3DConditionModel, granularity: str | None = None) -> None:
    """Recompute activations in the backward pass instead of storing them (see CHECKPOINT_GRANULARITIES).

    diffusers marks UNet3D as not supporting checkpointing, so we give each target module an
    instance `forward` that checkpoints its class's forward: module names and adapter keys are
    unchanged. Non-reentrant checkpointing restores the RNG state, so dropout matches the first pass.
    `granularity=None` re-enables the last one chosen (validation turns checkpointing off and on).
    """
    granularity = granularity or getattr(unet, "_md_checkpoint_granularity", DEFAULT_GRANULARITY)
    disable_gradient_checkpointing(unet)
    unet._md_checkpoint_granularity = granularity
    for module in checkpoint_targets(unet, granularity):
        module.forward = partial(_checkpointed_forward, module)
        module._md_checkpointed = True


def disable_gradient_checkpointing(unet: UNet3DConditionModel) -> None:
    for module in unet.modules():
        if getattr(module, "_md_checkpointed", False):
            del module.forward  # back to the class's forward
            module._md_checkpointed = False


def _checkpointed_forward(module: torch.nn.Module, *args, **kwargs):
    forward = partial(type(module).forward, module)  # looked up per call: class swaps stay effective
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def set_attention_backend(unet: UNet3DConditionModel, xformers: bool = False) -> str:
    """Use xformers when asked and importable, else PyTorch SDPA (the diffusers default, leaner)."""
    if xformers:
        try:
            unet.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as err:  # xformers missing or no CUDA: SDPA is as fast on torch 2
            logger.warning("xformers unavailable (%s); using PyTorch SDPA attention", err)
    unet.set_attn_processor(LeanSdpaProcessor())
    return "sdpa"
