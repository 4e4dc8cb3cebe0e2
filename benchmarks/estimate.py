"""Predict the GPU memory and FLOPs of a MotionDirector training run without a GPU.

The real step (`utils.training.step.train_step` on the base's denoiser with both peft LoRA paths
injected as the trainer injects them, one spatial LoRA per training video, frozen weights in
fp16/bf16 (or fp32 with `frozen_dtype`), LoRA weights in fp32, AdamW state) runs on meta tensors:
shapes and dtypes propagate through the forward, the checkpoint recomputation and the backward,
and nothing is allocated. PyTorch's `MemTracker` (torch.distributed._tools.mem_tracker) follows
every storage to the peak and sorts it into weights, gradients, optimiser state and activations;
`torch.utils.flop_counter`'s formulas count the matmul/conv/attention FLOPs, recomputation included.
The other phases of a run that set the process peak are traced the same way (`PHASES`): latent
caching (VAE encode), the DDIM inversion (one no-grad denoiser step of 50: each step holds the
same), and validation sampling (one guided step, CFG batch 2, then the VAE decode).

Meta rather than `FakeTensorMode`: the same meta kernels underneath, 3-4x faster to trace, and a
CPU-only PyTorch cannot fake CUDA tensors through autocast either way, so CUDA's autocast, attention
kernels and fused dropout are emulated (`cuda_emulation.py`).
Modelled as a stated term: cuBLAS workspaces (`CUBLAS_WORKSPACE`, one per thread that runs
matmuls; they go through the caching allocator and stay, so they count in max_memory_allocated).
Not modelled: cuDNN's convolution workspaces (allocated per call through the caching allocator, so
inside max_memory_allocated, but their size is cuDNN's choice: an uncertainty), the CUDA context
(outside max_memory_allocated), allocator rounding and fragmentation, kernels' internal scratch.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cuda_emulation import CudaAutocast, cpu_attention, cuda_attention, emulated_cuda

logger = logging.getLogger(__name__)

GB = 2**30  # "GB" below is GiB, as nvidia-smi's MiB / 1024
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHECKPOINTING = ("off", "block", "fine")  # "off" and every base's granularities
LORA_DROPOUT = 0.1  # the configs' lora_unet_dropout
# PyTorch's default cuBLAS workspace (aten/src/ATen/cuda/CublasHandlePool.cpp, `getChosenWorkspaceSize`):
# 32 MiB on compute capability 9.x/10.x/12.x (Hopper, Blackwell), 8 MiB + 128 KiB before; allocated
# through the caching allocator once per (handle, stream), a handle per thread, and kept. cuBLASLt
# shares it (unified workspace, the default). We state the larger one.
CUBLAS_WORKSPACE = 32 * 2**20
# Threads whose matmuls hold a workspace by each phase: the main thread, plus the autograd
# engine's device thread once a backward has run (training, and validation after it).
CUBLAS_THREADS = {"caching": 1, "inversion": 1, "training_step": 2, "validation": 2}
PHASES = tuple(CUBLAS_THREADS)
UNCERTAIN = ("cuDNN convolution workspaces: allocated per call through the caching allocator (so inside "
             "max_memory_allocated), size chosen by cuDNN's heuristics; cap with CUDNN_CONV_WSCAP_DBG (MiB); "
             "not in the prediction")


@dataclass(frozen=True)
class Setup:
    arch: str = "zeroscope"  # a full-size architecture of a base (`VideoBase.archs`), "tiny" or "model"
    width: int = 384
    height: int = 384
    frames: int = 16
    rank: int = 32
    precision: str = "fp16"  # autocast's dtype, and the frozen weights' unless frozen_dtype says otherwise
    checkpointing: str = "block"
    frozen_dtype: str = ""  # "" = precision; "fp32": the denoiser's frozen weights in fp32 under autocast
    videos: int = 1  # training videos: one spatial LoRA (and its AdamW state) each

    @property
    def frozen(self) -> str:
        return self.frozen_dtype or self.precision


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


def build_meta_denoiser(base, config, rank: int | None, videos: int = 1):
    """The base's denoiser (as we run it) with the temporal LoRA and one spatial LoRA per video
    (no LoRA when `rank` is None), on the meta device (no memory)."""
    from models.lora import SPATIAL, TEMPORAL, add_adapter, spatial_adapter_names

    with torch.device("meta"):
        model = base.build_denoiser(config)
    model.requires_grad_(False)
    if rank is None:
        return model
    for name in (TEMPORAL, *spatial_adapter_names(videos)):
        add_adapter(model, name, base.lora_targets(model, SPATIAL if name != TEMPORAL else TEMPORAL), rank,
                    LORA_DROPOUT)
    return model


def materialise(module: torch.nn.Module, dtype: torch.dtype, device="meta") -> None:
    """New parameters in the training dtypes: frozen weights and floating buffers in `dtype`, LoRA in fp32
    as the trainer makes them."""
    for module_name, sub in module.named_modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                is_lora = "lora_" in f"{module_name}.{name}"
                sub._parameters[name] = torch.nn.Parameter(
                    torch.empty(p.shape, dtype=torch.float32 if is_lora else dtype, device=device),
                    requires_grad=False)
        for name, b in list(sub._buffers.items()):
            if b is not None:  # floating buffers (e.g. a positional table) take the dtype, as `.to(dtype)` does
                buffer_dtype = dtype if b.is_floating_point() else b.dtype
                sub._buffers[name] = torch.empty(b.shape, dtype=buffer_dtype, device=device)
        sub.__dict__.pop("_cached_dtype", None)  # models.fast_layers.CachedDtype: the dtype changed


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
        spatial = spatial_adapter_names(setup.videos)
        self.spatial = spatial[0]  # the clip trained on; the others only hold weights and AdamW state
        params = {name: adapter_parameters(unet, name) for name in (TEMPORAL, *spatial)}
        self.adapters = ts.Adapters(spatial, params, lora_layers(unet), TEMPORAL)
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
        """One step with both losses (spatial not skipped: the larger step), then the AdamW steps
        (an optimiser without gradients changes nothing)."""
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
    return _meta_peak(tracker), counter


def _meta_peak(tracker) -> dict:
    peak = tracker.get_tracker_snapshot("peak")[torch.device("meta")]  # AdamW's step counts are on the CPU
    return {getattr(k, "value", k): v for k, v in peak.items()}


# ---------------------------------------------------------------- the other phases of a run

class Phase(torch.nn.Module):
    """One phase of a run as a module: what stays on the GPU (`parts`) and what runs (`run`).

    MemTracker refuses a second forward of a root module; under this root, calling a part again
    (the VAE chunk by chunk) is a submodule's second call, which it allows.
    """

    def __init__(self, run, parts):
        super().__init__()
        self.parts = torch.nn.ModuleList(part for part in parts if part is not None)
        self.run = run

    def forward(self):
        self.run()


def trace_phase(run, parts, optimizers=()) -> dict:
    """Peak memory breakdown (bytes) while `run()` runs without gradients, `parts` (modules) and
    `optimizers` (their state) resident."""
    phase = Phase(run, parts)
    tracker = _frozen_aware_tracker()
    tracker.track_external(phase, *optimizers)
    with tracker, torch.no_grad():
        phase()
    return _meta_peak(tracker)


def meta_module(build, config, dtype: torch.dtype) -> torch.nn.Module:
    with torch.device("meta"):
        module = build(config)
    module.requires_grad_(False).eval()
    materialise(module, dtype)
    return module


def meta_text_encoder(base, sizes: dict, dtype: torch.dtype):
    """The base's text encoder on meta, or None when the base keeps it on the CPU (Wan's UMT5) or
    does not say how to build it."""
    if base.text_encoder_on_cpu or sizes.get("text_encoder") is None:
        return None
    try:
        return meta_module(base.build_text_encoder, sizes["text_encoder"], dtype)
    except NotImplementedError:
        return None


def trace_phases(base, unet, tracer: StepTracer, setup: Setup, sizes: dict, emulation: CudaAutocast) -> dict:
    """Peak breakdowns of latent caching, inversion and validation sampling, as the trainer runs them.

    Caching and inversion run before the LoRAs exist, with the text encoder still on the GPU and
    every frozen model in `precision` (the original cached with fp16 copies too); validation runs
    after training steps, with every adapter active, the AdamW state resident, under autocast.
    """
    from models.bases import Components

    dtype = DTYPES[setup.precision]
    vae = meta_module(base.build_vae, sizes["vae"], base.vae_dtype or dtype)
    text_encoder = meta_text_encoder(base, sizes, dtype)
    plain = build_meta_denoiser(base, sizes["denoiser"], None)
    materialise(plain, dtype)
    base.set_attention_backend(plain)
    plain.eval()
    early = Components(base, None, text_encoder, vae, plain, base.default_scheduler())
    late = Components(base, None, None, vae, unet, base.default_scheduler())
    shape = base.latent_shape(1, setup.frames, setup.height, setup.width)
    pixels = torch.zeros(1, setup.frames, 3, setup.height, setup.width)  # on the CPU, as the dataset gives them
    empty_prompt = torch.zeros(1, *sizes["text"], device="meta", dtype=dtype)  # the text encoder's, on the GPU
    prompt = torch.zeros(1, *sizes["text"], device="meta")  # validation's: encoded on the CPU in fp32
    return {
        "caching": trace_phase(lambda: encode_clip(early, pixels), [plain, vae, text_encoder]),
        "inversion": trace_phase(lambda: base.invert(early, torch.zeros(shape, device="meta"), empty_prompt, 1),
                                 [plain, vae, text_encoder]),
        "validation": trace_phase(lambda: sample_and_decode(late, tracer.adapters, shape, prompt, emulation),
                                  [unet, vae], tracer.optimizers),
    }


def encode_clip(components, pixels: torch.Tensor) -> None:
    """What latent caching runs on the GPU: the clip's VAE encode (and each frame alone for a base
    whose VAE mixes frames)."""
    components.encode_video(pixels)
    if not components.base.frames_are_images:
        components.encode_frames(pixels)


def sample_and_decode(components, adapters, shape, prompt: torch.Tensor, emulation: CudaAutocast) -> None:
    """One guided sampling step (each of the validation's steps holds the same) and the decode."""
    from models.checkpointing import checkpointing_paused

    unet = components.denoiser
    adapters.use(active=[*adapters.spatial, adapters.temporal], trainable=[])
    unet.eval()
    try:
        with checkpointing_paused(unet), emulation.autocast():
            # The denoiser call of one sampling step, guidance batched as `VideoBase.sample` batches
            # it (the scheduler's own step is latent-sized and, for flow schedulers, not traceable
            # on meta tensors: its timestep lookup needs nonzero()).
            latents = torch.randn(shape, device="meta")
            timesteps = torch.full((2,), 500, device="meta")
            components.predict(torch.cat([latents] * 2).to(unet.dtype), timesteps,
                               torch.cat([prompt, prompt]).to(unet.dtype))
            components.decode_video(latents)
    finally:
        unet.train()


# ---------------------------------------------------------------- the prediction

def set_checkpointing(base, unet, kind: str) -> None:
    from models.checkpointing import disable_gradient_checkpointing, enable_gradient_checkpointing

    disable_gradient_checkpointing(unet)
    if kind != "off":
        enable_gradient_checkpointing(unet, base.checkpoint_targets(unet, kind))


def estimate_denoiser(base, unet, setup: Setup, sizes: dict, target: str = "cuda", with_phases: bool = True) -> dict:
    """Trace a run of `unet` (parameters on meta; `sizes` = base.architecture) for `setup`: the
    training step, and on CUDA the other phases (unless `with_phases` is False); returns the prediction.

    `target="cpu"` predicts the step of a CPU run instead (fp32 only: the CPU's flash attention,
    its dropout, no autocast), to check the predictor against a step measured on this machine.
    """
    if target == "cpu" and (setup.precision != "fp32" or setup.frozen != "fp32"):
        raise ValueError("a CPU prediction is for fp32 runs (autocast does not act on meta tensors)")
    cuda = target == "cuda"
    base.set_attention_backend(unet)
    set_checkpointing(base, unet, setup.checkpointing)
    unet.train()
    start = time.perf_counter()
    emulation = CudaAutocast(DTYPES[setup.precision], cuda_attention if cuda else cpu_attention, fused_dropout=cuda)
    python_rng = random.getstate()  # the step seeds Python's RNG to pick a step with both losses
    with torch.random.fork_rng():
        materialise(unet, DTYPES[setup.frozen])
        tracer = StepTracer(base, unet, setup, sizes["text"], emulation.autocast if cuda else nullcontext)
        with emulated_cuda(emulation):
            peak, counter = trace(unet, tracer)
            phases = trace_phases(base, unet, tracer, setup, sizes, emulation) if cuda and with_phases else {}
    random.setstate(python_rng)
    vae = param_bytes(meta_module(base.build_vae, sizes["vae"], base.vae_dtype or DTYPES[setup.precision]).parameters())
    result = summarise(unet, setup, peak, counter, vae, phases, CUBLAS_WORKSPACE if cuda else 0)
    counted = "on the CPU" if base.text_encoder_on_cpu else meta_text_encoder(base, sizes, torch.float16) is not None
    result.update(text_encoder_counted=counted,
                  step_above_start_bytes=peak["Total"] - tracer.state_at_start,  # what the step itself adds
                  trace_s=round(time.perf_counter() - start, 1))
    return result


def summarise(unet, setup: Setup, peak: dict, counter: FlopCount, vae: int, phases: dict, workspace: int) -> dict:
    """The step's breakdown, each phase's peak (+ its cuBLAS workspaces), and the run's peak: their maximum.
    The VAE stays on the GPU during training (the text encoder moves to the CPU)."""
    frozen = param_bytes(p for n, p in unet.named_parameters() if "lora_" not in n)
    lora = param_bytes(p for n, p in unet.named_parameters() if "lora_" in n)
    activations = sum(peak.get(k, 0) for k in ("Activation", "Temp", "Other", "Buffer"))
    totals = {name: breakdown["Total"] + CUBLAS_THREADS[name] * workspace for name, breakdown in phases.items()}
    totals["training_step"] = peak["Total"] + vae + CUBLAS_THREADS["training_step"] * workspace
    breakdowns = dict(phases, training_step=dict(peak, VAE=vae))
    peak_phase = max(totals, key=totals.get)
    result = dict(asdict(setup))
    result.update(
        frozen_dtype=setup.frozen,
        weights_gb=frozen / GB,
        vae_gb=vae / GB,
        lora_params_gb=lora / GB,
        lora_grads_at_peak_gb=peak.get("Gradient", 0) / GB,
        optimizer_state_gb=peak.get("Optstate", 0) / GB,
        activations_at_peak_gb=activations / GB,
        cublas_workspace_gb=CUBLAS_THREADS["training_step"] * workspace / GB,
        step_peak_gb=totals["training_step"] / GB,
        phases={name: {"peak_gb": totals[name] / GB, "cublas_workspaces": CUBLAS_THREADS[name] if workspace else 0,
                       "breakdown_bytes": breakdowns[name]} for name in PHASES if name in totals},
        peak_phase=peak_phase,
        predicted_peak_gb=totals[peak_phase] / GB,
        peak_breakdown_bytes=peak,
        flops_per_step=counter.total,
        attention_flops_per_step=counter.attention,
        not_modelled=UNCERTAIN,
    )
    return result


def estimate(setup: Setup) -> dict:
    """The prediction for one setup of a full-size architecture (`Setup.arch`)."""
    base = base_of_arch(setup.arch)
    sizes = base.architecture(setup.arch)
    model = build_meta_denoiser(base, sizes["denoiser"], setup.rank, setup.videos)
    return estimate_denoiser(base, model, setup, sizes)


GRID_SIZES = ((384, 384, 16), (576, 320, 24), (576, 320, 16))


def grid(arch: str, rank: int) -> list[dict]:
    """Sizes x {fp16, bf16} x checkpointing {off and the base's granularities}."""
    kinds = ("off", *base_of_arch(arch).checkpoint_granularities)
    return [estimate(Setup(arch, w, h, f, rank, precision, ckpt))
            for w, h, f in GRID_SIZES for precision in ("fp16", "bf16") for ckpt in kinds]
