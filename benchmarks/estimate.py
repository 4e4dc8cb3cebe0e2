"""Predict the GPU memory and FLOPs of one MotionDirector training step without a GPU.

The real step (`utils.training.step.train_step` on the base's denoiser with both peft LoRA paths
injected as the trainer injects them, frozen weights in fp16/bf16, LoRA weights in fp32, AdamW state) runs
on meta tensors: shapes and dtypes propagate through the forward, the checkpoint recomputation
and the backward, and nothing is allocated. PyTorch's `MemTracker`
(torch.distributed._tools.mem_tracker) follows every storage to the peak and sorts it into
weights, gradients, optimiser state and activations; `torch.utils.flop_counter`'s formulas count
the matmul/conv/attention FLOPs, recomputation included.

Meta rather than `FakeTensorMode`: the same meta kernels underneath, 3-4x faster to trace, and a
CPU-only PyTorch cannot fake CUDA tensors through autocast either way (its autocast cast needs a
CUDA device guard and aborts the process). So two CUDA behaviours are emulated:
  * autocast: `CudaAutocast` applies CUDA's op lists (ATen's autocast_mode.h, the lists the
    AutocastCUDA kernels use): matmuls/convs/SDPA in fp16/bf16, norms, softmax, exp, upsampling
    and losses in fp32. CPU autocast differs (its group_norm/layer_norm stay in half precision).
  * attention: SDPA runs as CUDA's flash kernel (`aten._scaled_dot_product_flash_attention`,
    head dim zero-padded to a multiple of 8 as attention.cpp does on CUDA), so the attention
    matrix is never materialised and the saved logsumexp is counted. In fp32 it runs as the
    memory-efficient kernel.
Not modelled: the CUDA context (~0.3-0.5 GB outside `max_memory_allocated`), allocator rounding
and fragmentation, cuDNN/cuBLAS workspaces, and kernels' internal scratch memory.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from unittest import mock

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

logger = logging.getLogger(__name__)

GB = 2**30  # "GB" below is GiB, as nvidia-smi's MiB / 1024
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHECKPOINTING = ("off", "block", "fine")  # "off" and every base's granularities
LORA_DROPOUT = 0.1  # the configs' lora_unet_dropout
MFU = 0.4  # the fraction of the datasheet peak a step is assumed to reach


# Dense tensor-core peaks (sparsity figures halved), fp16/bf16 with fp32 accumulation, TFLOP/s.
GPU_PEAK_TFLOPS = {
    "A5000": {"fp16": 111.1, "bf16": 111.1, "fp32": 27.8},  # RTX A5000 datasheet: 222.2 sparse
    "RTX 4090": {"fp16": 165.2, "bf16": 165.2, "fp32": 82.6},  # Ada whitepaper, fp32 accumulate
    "H100 SXM": {"fp16": 989.4, "bf16": 989.4, "fp32": 66.9},  # H100 datasheet: 1979 sparse
}


@dataclass(frozen=True)
class Setup:
    arch: str = "zeroscope"  # a full-size architecture of a base (`VideoBase.archs`), "tiny" or "model"
    width: int = 384
    height: int = 384
    frames: int = 16
    rank: int = 32
    precision: str = "fp16"
    checkpointing: str = "block"


# ---------------------------------------------------------------- CUDA behaviour on meta tensors

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
            return self.attention(*_cast(args, self.dtype) if self.enabled else args, **kwargs)
        if func is F.dropout and self.fused_dropout:
            return fused_dropout(*args, **kwargs)
        if self.enabled and func in _LOWER:
            return func(*_cast(args, self.dtype), **_cast(kwargs, self.dtype))
        if self.enabled and func in _FP32:
            return func(*_cast(args, torch.float32), **kwargs)
        if self.enabled and func in _FP32_OUT and args[0].dtype in (torch.float16, torch.bfloat16):
            kwargs.setdefault("dtype", torch.float32)
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
    the losses; any value gives the same shapes, so the same memory and FLOPs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.item and args[0].device.type == "meta":
            return 0.0 if args[0].is_floating_point() else 0
        return func(*args, **(kwargs or {}))


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


# ---------------------------------------------------------------- the model on meta tensors

def base_of_arch(arch: str):
    """The base whose full-size architectures include `arch` ("tiny": ZeroScope's test model)."""
    from models.bases import BASES

    if arch == "tiny":
        return BASES["zeroscope"]
    for base in BASES.values():
        if arch in base.archs:
            return base
    raise ValueError(f"unknown arch {arch!r}; choose from {all_archs()}")


def all_archs() -> list[str]:
    from models.bases import BASES

    return [arch for base in BASES.values() for arch in base.archs]


def build_meta_denoiser(base, config, rank: int):
    """The base's denoiser (as we run it) with both LoRA paths, on the meta device (no memory)."""
    from models.lora import SPATIAL, TEMPORAL, add_adapter, spatial_adapter_names

    with torch.device("meta"):
        model = base.build_denoiser(config)
    model.requires_grad_(False)
    for name, path in ((TEMPORAL, TEMPORAL), (spatial_adapter_names(1)[0], SPATIAL)):
        add_adapter(model, name, base.lora_targets(model, path), rank, LORA_DROPOUT)
    return model


def materialise(module: torch.nn.Module, dtype: torch.dtype, device="meta") -> None:
    """New parameters in the training dtypes: frozen weights in `dtype`, LoRA in fp32 as the trainer keeps them."""
    for module_name, sub in module.named_modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                is_lora = "lora_" in f"{module_name}.{name}"
                sub._parameters[name] = torch.nn.Parameter(
                    torch.empty(p.shape, dtype=torch.float32 if is_lora else dtype, device=device),
                    requires_grad=False)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)


def param_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


# ---------------------------------------------------------------- tracing one step

class StepTracer:
    """Both LoRA paths, their AdamWs, meta latents and prompt embeddings: what `train_step` needs."""

    def __init__(self, base, unet, setup: Setup, text: tuple[int, int], autocast, device="meta"):
        from models.bases import Components
        from models.lora import TEMPORAL, adapter_parameters, lora_layers, spatial_adapter_names
        from utils.training import step as ts

        self.unet, self.setup, self.ts = unet, setup, ts
        self.components = Components(base, None, None, None, unet, base.default_scheduler())
        self.spatial = spatial_adapter_names(1)[0]
        params = {name: adapter_parameters(unet, name) for name in (TEMPORAL, self.spatial)}
        self.adapters = ts.Adapters([self.spatial], params, lora_layers(unet), TEMPORAL)
        # The trainer's fused AdamW has no meta kernel; the per-tensor AdamW keeps the same state
        # (exp_avg, exp_avg_sq, step) and its per-tensor temporaries are LoRA-sized.
        self.optimizers = [torch.optim.AdamW(p, lr=5e-4, weight_decay=1e-2, foreach=False) for p in params.values()]
        shape = base.latent_shape(1, setup.frames, setup.height, setup.width)
        self.latents = torch.randn(shape, device=device)
        # A base whose clip latents mix frames trains the spatial path on per-frame image latents.
        frames = (1, base.latent_channels, setup.frames, *shape[3:])
        self.frame_latents = None if base.frames_are_images else torch.randn(frames, device=device)
        self.embeddings = torch.randn(1, *text, device=device, dtype=DTYPES[setup.precision])
        self.autocast = autocast
        self.before_forward = lambda: None

    def _autocast(self):
        self.before_forward()  # train_step enters autocast right before each UNet forward
        return self.autocast()

    def step(self) -> None:
        """One step with both losses (spatial not skipped: the larger step), then both AdamW steps."""
        random.seed(next(s for s in range(100) if not _skips(s)))
        self.ts.train_step(self.components, self.latents, self.embeddings, self.adapters, self.spatial,
                           self.ts.StepSettings(), backward=lambda loss: loss.backward(), autocast=self._autocast,
                           frame_latents=self.frame_latents)
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def create_optimizer_state(self) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def _skips(seed: int) -> bool:
    from utils.training.step import SPATIAL_SKIP_PROB

    random.seed(seed)
    return random.uniform(0, 1) < SPATIAL_SKIP_PROB


def _frozen_aware_tracker():
    """A MemTracker for a model whose base weights are frozen.

    MemTracker hooks the gradient of every parameter, which fails on a frozen one; here only
    parameters that take gradients (the LoRA weights of the path being trained) get the hooks.
    """
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType

    class FrozenAwareMemTracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            memory = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            if install_grad_hooks:
                for param in module.parameters():
                    if param.requires_grad and param not in self._param_to_grad_hook_handles:
                        self._param_to_grad_hook_handles[param] = (
                            param.register_hook(self._track_grad),
                            param.register_post_accumulate_grad_hook(lambda p: self._track_grad(p.grad)),
                        )
            return memory

        def _update_peak_stats(self, peak_state):
            # Only the global peak: the per-module peaks (unused here) cost O(modules) per op.
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(snap)

        def _track_grad(self, grad):
            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)  # returns None: grad unchanged

    return FrozenAwareMemTracker()


class FlopCount(TorchDispatchMode):
    """FlopCounterMode's per-op formulas without its module tracking.

    FlopCounterMode's ModTracker keeps the activations of checkpointed regions alive (measured:
    on the tiny model, block checkpointing then saves nothing), so memory could not be traced
    in the same pass; the formulas (torch.utils.flop_counter.flop_registry) are the same.
    """

    def __init__(self):
        super().__init__()
        self.total = self.attention = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            self.total += flops
            self.attention += flops if "attention" in func._overloadpacket.__name__ else 0
        return out


def trace(unet, tracer: StepTracer) -> tuple[dict, FlopCount]:
    """Peak memory breakdown (bytes, MemTracker categories) and FLOPs of a steady-state step."""
    tracer.create_optimizer_state()  # a steady-state step: the AdamW state exists from the start
    tracker = _frozen_aware_tracker()
    tracker.track_external(unet, *tracer.optimizers)
    # MemTracker refuses a second call of the root module (its per-module stats, which we do not
    # use, assume one forward per iteration); the step calls the UNet twice.
    tracer.before_forward = tracker.reset_mod_stats
    counter = FlopCount()
    with tracker, counter:
        tracer.state_at_start = tracker.get_tracker_snapshot()[torch.device("meta")]["Total"]
        tracer.step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("meta")]  # AdamW's step counts are on the CPU
    return {getattr(k, "value", k): v for k, v in peak.items()}, counter


def set_checkpointing(base, unet, kind: str) -> None:
    from models.checkpointing import disable_gradient_checkpointing, enable_gradient_checkpointing

    disable_gradient_checkpointing(unet)
    if kind != "off":
        enable_gradient_checkpointing(unet, base.checkpoint_targets(unet, kind))


def estimate_denoiser(base, unet, setup: Setup, sizes: dict, target: str = "cuda") -> dict:
    """Trace one step of `unet` (parameters on meta; `sizes` = base.architecture) for `setup`;
    returns the prediction.

    `target="cpu"` predicts a CPU run instead (fp32 only: the CPU's flash attention, no autocast),
    to check the predictor against a step measured on this machine.
    """
    if target == "cpu" and setup.precision != "fp32":
        raise ValueError("a CPU prediction is for fp32 runs (autocast does not act on meta tensors)")
    dtype = DTYPES[setup.precision]
    base.set_attention_backend(unet)
    set_checkpointing(base, unet, setup.checkpointing)
    unet.train()
    start = time.perf_counter()
    cuda = target == "cuda"
    emulation = CudaAutocast(dtype, cuda_attention if cuda else cpu_attention, fused_dropout=cuda)
    python_rng = random.getstate()  # the step seeds Python's RNG to pick a step with both losses
    with torch.random.fork_rng():
        materialise(unet, dtype)
        tracer = StepTracer(base, unet, setup, sizes["text"], emulation.autocast if target == "cuda" else nullcontext)
        with ZeroItems(), emulation, recompute_with_autocast_state(emulation), lora_sees_emulated_autocast(emulation):
            peak, counter = trace(unet, tracer)
    random.setstate(python_rng)
    vae = vae_bytes(base, sizes["vae"], dtype) if setup.arch in base.archs else 0
    result = summarise(unet, setup, peak, counter, vae, time.perf_counter() - start)
    result["step_above_start_bytes"] = peak["Total"] - tracer.state_at_start  # what the step itself adds
    return result


def vae_bytes(base, config, dtype: torch.dtype) -> int:
    """The VAE stays on the GPU during training (the text encoder moves to the CPU)."""
    with torch.device("meta"):
        vae = base.build_vae(config)
    return sum(p.numel() for p in vae.parameters()) * dtype.itemsize


def summarise(unet, setup: Setup, peak: dict, counter: FlopCount, vae: int, seconds: float) -> dict:
    frozen = param_bytes(p for n, p in unet.named_parameters() if "lora_" not in n)
    lora = param_bytes(p for n, p in unet.named_parameters() if "lora_" in n)
    activations = sum(peak.get(k, 0) for k in ("Activation", "Temp", "Other", "Buffer"))
    total = peak["Total"] + vae
    result = dict(asdict(setup))
    result.update(
        weights_gb=frozen / GB,
        vae_gb=vae / GB,
        lora_params_gb=lora / GB,
        lora_grads_at_peak_gb=peak.get("Gradient", 0) / GB,
        optimizer_state_gb=peak.get("Optstate", 0) / GB,
        activations_at_peak_gb=activations / GB,
        predicted_peak_gb=total / GB,
        peak_breakdown_bytes=peak,
        flops_per_step=counter.total,
        attention_flops_per_step=counter.attention,
        predicted_s_per_step={gpu: counter.total / (MFU * peaks[setup.precision] * 1e12)
                              for gpu, peaks in GPU_PEAK_TFLOPS.items()},
        trace_s=round(seconds, 1),
    )
    return result


def estimate(setup: Setup) -> dict:
    """The prediction for one setup of a full-size architecture (`Setup.arch`)."""
    base = base_of_arch(setup.arch)
    sizes = base.architecture(setup.arch)
    return estimate_denoiser(base, build_meta_denoiser(base, sizes["denoiser"], setup.rank), setup, sizes)


GRID_SIZES = ((384, 384, 16), (576, 320, 24), (576, 320, 16))


def grid(arch: str, rank: int) -> list[dict]:
    """Sizes x {fp16, bf16} x checkpointing {off and the base's granularities}."""
    kinds = ("off", *base_of_arch(arch).checkpoint_granularities)
    return [estimate(Setup(arch, w, h, f, rank, precision, ckpt))
            for w, h, f in GRID_SIZES for precision in ("fp16", "bf16") for ckpt in kinds]
