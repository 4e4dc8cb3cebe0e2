"""The stock diffusers UNet3DConditionModel, with the original MotionDirector single-frame rule.

When the UNet gets one frame, the original skips `transformer_in`, every temporal attention and
every temporal conv. (Its non-checkpointed path kept `mid_block.temp_convs[0]`, but every shipped
config trained with gradient checkpointing, whose blocks skip that conv too; the released spatial
LoRAs were trained through that forward.) We swap the temporal modules' classes for thin
subclasses: the weights and state-dict keys stay exactly the stock ones, and checkpointing never
changes the math.
"""

import logging

import torch
from diffusers import UNet3DConditionModel
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


def load_unet(model_path: str, dtype: torch.dtype = torch.float32) -> UNet3DConditionModel:
    """Load the pipeline's UNet (local diffusers folder or hub id) with the single-frame rule."""
    unet = UNet3DConditionModel.from_pretrained(model_path, subfolder="unet", torch_dtype=dtype)
    return apply_single_frame_rule(unet)


def enable_gradient_checkpointing(unet: UNet3DConditionModel) -> None:
    """Recompute each down/mid/up block in the backward pass instead of storing its activations.

    diffusers marks UNet3D as not supporting checkpointing, so we wrap each block's forward.
    Only the forward method is replaced, so module names and adapter keys are unchanged;
    non-reentrant checkpointing restores the RNG state, so dropout matches the first pass.
    """
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    for block in blocks:
        if getattr(block, "_md_checkpointed", False):
            continue
        block._md_plain_forward = block.forward
        block.forward = _checkpointed(block._md_plain_forward)
        block._md_checkpointed = True


def disable_gradient_checkpointing(unet: UNet3DConditionModel) -> None:
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        if getattr(block, "_md_checkpointed", False):
            block.forward = block._md_plain_forward
            block._md_checkpointed = False


def _checkpointed(forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def set_attention_backend(unet: UNet3DConditionModel, xformers: bool = False) -> str:
    """Use xformers when asked and importable, else PyTorch SDPA (the diffusers default)."""
    if xformers:
        try:
            unet.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as err:  # xformers missing or no CUDA: SDPA is as fast on torch 2
            logger.warning("xformers unavailable (%s); using PyTorch SDPA attention", err)
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"
