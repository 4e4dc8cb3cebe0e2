"""CUDA's behaviour, emulated on meta tensors for the step predictor (`estimate.py`).

A CPU-only PyTorch cannot fake CUDA tensors through autocast (its autocast cast needs a CUDA device
guard and aborts the process), so what a CUDA run does differently is applied here by hand:
  * autocast: `CudaAutocast` applies CUDA's op lists (ATen's autocast_mode.cpp; the ops whose
    AutocastCUDA entry is a kernel, not a fallthrough): matmuls/convs/SDPA in fp16/bf16, norms,
    softmax, exp and losses in fp32. CPU autocast differs (its group_norm/layer_norm stay in half
    precision, its upsampling goes to fp32). Frozen fp32 weights are cast per call, not cached
    (autocast caches only leaf tensors that require grad).
  * attention: SDPA runs as CUDA's flash kernel (`aten._scaled_dot_product_flash_attention`,
    head dim zero-padded to a multiple of 8 as attention.cpp does on CUDA, at most 256), so the
    attention matrix is never materialised and the saved logsumexp is counted. In fp32, or for
    wider heads, it runs as the memory-efficient kernel.
  * dropout: CUDA's fused `native_dropout`, which saves a bool mask.
  * `.item()`, `.cpu()` and indexing a CPU table with a meta index: see `ZeroItems`.

    with emulated_cuda(CudaAutocast(torch.float16)) as emulation:
        with emulation.autocast():
            ...  # the forward, as under torch.autocast("cuda", torch.float16)
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from unittest import mock

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_LOWER = {torch.conv1d, torch.conv2d, torch.conv3d, torch.conv_transpose1d, torch.conv_transpose2d,
          torch.conv_transpose3d, F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
          torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.baddbmm, torch.Tensor.baddbmm,
          torch.addmm, torch.Tensor.addmm, torch.einsum, torch.prelu}
# (Upsampling is in CPU autocast's float32 list, not CUDA's: its AutocastCUDA entry is a fallthrough.)
_FP32 = {F.group_norm, torch.group_norm, F.layer_norm, torch.layer_norm, torch.exp, torch.Tensor.exp,
         torch.log, torch.Tensor.log, torch.rsqrt, torch.Tensor.rsqrt, torch.pow, torch.Tensor.pow,
         torch.Tensor.__pow__, F.mse_loss, F.l1_loss, F.softplus}
# Ops CUDA autocast runs with dtype=float32 (fp32 output, no fp32 copy of the input).
_FP32_OUT = {F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax, torch.log_softmax,
             torch.Tensor.log_softmax, torch.cumsum, torch.Tensor.cumsum, torch.sum, torch.Tensor.sum}


def _cast(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


class CudaAutocast(TorchFunctionMode):
    """CUDA autocast's casting rules, applied to whatever device the tensors are on.

    Casts sit above autograd as in real autocast, so a cast copy saved for the backward is
    counted. `enabled` is toggled by `autocast()`; checkpoint recomputation restores it.
    `fused_dropout`: dropout as CUDA runs it (ATen's `dropout` takes `native_dropout` for CUDA
    inputs, whose saved mask is bool, 1 byte an element); elsewhere a mask in the input's dtype.
    """

    def __init__(self, dtype: torch.dtype, attention=None, fused_dropout: bool = True):
        super().__init__()
        self.dtype, self.enabled = dtype, False
        self.attention = attention or cuda_attention
        self.fused_dropout = fused_dropout

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            # diffusers' attention dispatch (Wan) passes query/key/value by keyword
            args = (*args, *(kwargs.pop(name) for name in ("query", "key", "value") if name in kwargs))
            return self.attention(*_cast(args, self.dtype) if self.enabled else args, **kwargs)
        if func is F.dropout and self.fused_dropout:
            return fused_dropout(*args, **kwargs)
        if self.enabled and func in _LOWER:
            return func(*_cast(args, self.dtype), **_cast(kwargs, self.dtype))
        if self.enabled and func in _FP32:
            return func(*_cast(args, torch.float32), **kwargs)
        if self.enabled and func in _FP32_OUT and args[0].dtype in (torch.float16, torch.bfloat16):
            if kwargs.get("dtype") is None:  # F.softmax passes dtype=None explicitly
                kwargs["dtype"] = torch.float32
        return func(*args, **kwargs)

    @contextmanager
    def state(self, enabled: bool):
        before, self.enabled = self.enabled, enabled
        try:
            yield
        finally:
            self.enabled = before

    @contextmanager
    def recomputing(self, enabled: bool):
        """The state for a checkpoint's recomputation, which the autograd engine may run on a
        worker thread (meta tensors do): function modes are per thread, so enter it there."""
        from torch.overrides import _get_current_function_mode_stack

        outside = self not in _get_current_function_mode_stack()
        with self if outside else nullcontext(), self.state(enabled):
            yield

    def autocast(self):
        return self.state(True)


class ZeroItems(TorchFunctionMode):
    """`.item()` of a meta tensor is 0: the step reads a random frame index, an anchor frame and
    the losses; any value gives the same shapes, so the same memory and FLOPs. Likewise a meta
    index into a CPU table (a scheduler's alphas at a meta timestep) reads entry 0. `.cpu()` of a
    meta tensor (decoded frames leaving the GPU) is the tensor itself: nothing is on the GPU after."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.item and args[0].device.type == "meta":
            return 0.0 if args[0].is_floating_point() else 0
        if func is torch.Tensor.__bool__ and args[0].device.type == "meta":
            return True  # a scheduler's `timestep >= 0`: either branch has the same shapes
        if func is torch.Tensor.__getitem__ and _meta_index_into_cpu(*args):
            return func(args[0], torch.zeros(args[1].shape, dtype=args[1].dtype))
        if func is torch.Tensor.cpu and args[0].device.type == "meta":
            return args[0]
        return func(*args, **(kwargs or {}))


def _meta_index_into_cpu(table, index) -> bool:
    return (isinstance(index, torch.Tensor) and index.device.type == "meta" and table.device.type == "cpu"
            and not index.is_floating_point())


def fused_dropout(input, p=0.5, training=True, inplace=False):
    """F.dropout as CUDA runs it: `native_dropout`, which saves a bool mask for the backward."""
    if not training or p == 0 or p == 1 or input.numel() == 0:
        return F.dropout(input, p, training, inplace)
    return torch.ops.aten.native_dropout(input, p, True)[0]


FLASH_MAX_HEAD_DIM = 256  # PyTorch's flash kernel takes head dims up to 256; wider ones go to mem-efficient


def cuda_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """SDPA as CUDA runs it: flash in fp16/bf16 (head dim padded to 8, at most 256: the VAE's one
    512-wide head is not), memory-efficient otherwise."""
    if kwargs.get("enable_gqa"):
        raise NotImplementedError("grouped-query attention is not used by the UNet")
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    head_dim = q.shape[-1]
    if q.dtype in (torch.float16, torch.bfloat16) and attn_mask is None and head_dim <= FLASH_MAX_HEAD_DIM:
        pad = -head_dim % 8
        q, k, v = (F.pad(t, (0, pad)) if pad else t for t in (q, k, v))
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)[0]
        return out[..., :head_dim] if pad else out
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, attn_mask, True, dropout_p, is_causal, scale=scale)[0]


def cpu_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """SDPA as the CPU runs it in training (its flash kernel), for checking against a CPU run."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


@contextmanager
def lora_sees_emulated_autocast(emulation: CudaAutocast):
    """LeanLoraLinear asks `models.fast_layers.autocast_dtype` whether autocast is on (to run its
    branch in the compute dtype); real autocast is never on here, so it answers for the emulation."""
    from models import fast_layers

    def autocast_dtype(device_type: str):
        return emulation.dtype if emulation.enabled and emulation.dtype != torch.float32 else None

    with mock.patch.object(fast_layers, "autocast_dtype", autocast_dtype):
        yield


@contextmanager
def recompute_with_autocast_state(emulation: CudaAutocast):
    """Checkpoint recomputation runs with the autocast state of the original forward, as on CUDA."""
    original = torch.utils.checkpoint.checkpoint

    def checkpoint(fn, *args, **kwargs):
        state = emulation.enabled
        kwargs.setdefault("context_fn", lambda: (nullcontext(), emulation.recomputing(state)))
        return original(fn, *args, **kwargs)

    with mock.patch.object(torch.utils.checkpoint, "checkpoint", checkpoint):
        yield


@contextmanager
def emulated_cuda(emulation: CudaAutocast):
    """All of the emulation at once: autocast rules, meta `.item()`, checkpoint recomputation
    and the LoRA layers' autocast question."""
    with ZeroItems(), emulation, recompute_with_autocast_state(emulation), lora_sees_emulated_autocast(emulation):
        yield emulation
