"""Benchmark one MotionDirector setup: training step time and peak memory, latent caching,
the noise-prior inversion and sampling, on the CPU or a GPU.

    python benchmarks/benchmark.py --model models/tiny_t2v --width 64 --height 64 --frames 8 --rank 4
    python benchmarks/benchmark.py --arch zeroscope --width 576 --height 320 --frames 16 \\
        --precision fp16 --compare "" "--gradient-checkpointing"

The training step is the real `utils.training.step.train_step` (spatial and temporal forward and
backward) plus both AdamW steps, wired as `utils.training.trainer` wires them. Every step is seeded with
`--seed + step`, so two setups see the same spatial-loss skips, noise and timesteps.
`--original-order` replays the original code's per-step work instead (prompt re-encoded, both
forwards before the backwards, non-fused AdamW) for a before/after on one machine.
`--estimate` predicts instead of measuring: the GPU peak memory and FLOPs of one training step of
the full-size UNet, traced on meta tensors without a GPU (benchmarks/estimate.py; `--grid` for the
whole grid, `--estimate-check` to compare with a measured step).
Prints a table, then one JSON line (always the last line of stdout) for scripts.
`--vs-original [its flags]` runs benchmarks/vs_original.py instead: our training loop against the
original code's own loop, side by side (needs the oracle harness in ../shared/oracle).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # run as `python benchmarks/benchmark.py` from anywhere
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import estimate  # noqa: E402
from models.bases import Components, base_for_model, load_components  # noqa: E402
from models.checkpointing import checkpointing_paused, enable_gradient_checkpointing  # noqa: E402
from models.lora import (  # noqa: E402
    SPATIAL,
    TEMPORAL,
    adapter_parameters,
    add_adapter,
    lora_layers,
    spatial_adapter_names,
)
from utils.cli import run_cli  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.training import step as ts  # noqa: E402
from utils.training.prompt_cache import PromptCache  # noqa: E402

logger = logging.getLogger("benchmark")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LORA_DROPOUT = 0.1  # the configs' lora_unet_dropout
LEARNING_RATE, WEIGHT_DECAY = 5e-4, 1e-2
PROMPT = "A car is running on the road."

# Dense peak TFLOP/s from NVIDIA's datasheets (sparsity figures halved); the first name match wins.
PEAK_TFLOPS = (
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    ("H100", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    ("H200", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    ("A5000", {"fp32": 27.8, "tf32": 55.6, "bf16": 111.1, "fp16": 111.1}),
)


# ---------------------------------------------------------------- command line

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", help="diffusers text-to-video folder (e.g. a ZeroScope clone)")
    model.add_argument("--arch", choices=("tiny", *estimate.all_archs()), default="tiny",
                       help="random weights built in code when no --model: the tiny test model or a base's "
                            "full-size architecture (zeroscope and modelscope share one UNet; default tiny)")
    p.add_argument("--estimate", action="store_true",
                   help="predict the GPU peak memory and FLOPs of one training step by tracing it on meta "
                        "tensors (nothing allocated, no GPU needed) instead of running it")
    p.add_argument("--estimate-check", action="store_true",
                   help="check the predictor: run one real step and print the memory it adds beside the "
                        "prediction (CUDA: max_memory_allocated; CPU, fp32 only: profiler memory events)")
    p.add_argument("--frozen-dtype", choices=("fp32",),
                   help="with --estimate: keep the denoiser's frozen weights in fp32 under --precision's autocast "
                        "(the original's setting) instead of casting them to --precision")
    p.add_argument("--videos", type=int, default=1,
                   help="with --estimate: training videos, one spatial LoRA and its AdamW state each (default 1)")
    p.add_argument("--grid", action="store_true",
                   help="with --estimate: the whole grid (384x384x16, 576x320x24, 576x320x16 x fp16/bf16 x "
                        "checkpointing off/block/fine) for --arch and --rank")
    p.add_argument("--video", help="training clip (default: a synthetic moving square)")
    p.add_argument("--prompt", default=PROMPT, help="training prompt and sampling prompt")
    p.add_argument("--width", type=int, default=64, help="frame width, a multiple of 8 (default 64)")
    p.add_argument("--height", type=int, default=64, help="frame height, a multiple of 8 (default 64)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip, training and sampling (default 8)")
    p.add_argument("--rank", type=int, default=32, help="LoRA rank of both paths (default 32)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps; the median is reported (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first (default 2)")
    p.add_argument("--seed", type=int, default=0, help="step i is seeded with seed + i (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cuda when available)")
    p.add_argument("--precision", choices=tuple(DTYPES), default="fp32",
                   help="frozen weights' dtype and autocast; LoRA weights stay fp32 (default fp32)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, as the reference figures)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convs on CUDA in fp32")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward (at the base's default granularity: fine for "
                        "ZeroScope)")
    p.add_argument("--checkpointing", choices=estimate.CHECKPOINTING,
                   help="checkpointing granularity: off, per UNet block, or fine (per resnet / attention / "
                        "temporal module); overrides --gradient-checkpointing")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (compile time is in the warm-up)")
    p.add_argument("--attention", choices=("sdpa", "xformers", "eager"), default="sdpa",
                   help="attention processor: PyTorch SDPA, xformers, or diffusers' plain AttnProcessor")
    p.add_argument("--no-prompt-cache", action="store_true", help="re-encode the prompt every step like the original")
    p.add_argument("--no-fused-adam", action="store_true",
                   help="plain AdamW (fused is the trainer's default on every device)")
    p.add_argument("--original-order", action="store_true",
                   help="the original's step: prompt re-encoded, spatial graph kept alive through the temporal "
                        "forward and backward (retain_graph), spatial optimiser stepped in between, plain AdamW")
    p.add_argument("--inversion-steps", type=int, default=50, help="noise-prior inversion steps (default 50)")
    p.add_argument("--sample-steps", type=int, default=30, help="sampling steps, the base's sampler (default 30)")
    p.add_argument("--guidance-scale", type=float, default=12.0, help="classifier-free guidance (default 12)")
    p.add_argument("--skip-caching", action="store_true", help="do not time latent caching and the inversion")
    p.add_argument("--skip-inversion", action="store_true", help="do not time the noise-prior inversion")
    p.add_argument("--skip-sampling", action="store_true", help="do not time sampling")
    p.add_argument("--count-flops", action="store_true", help="count training FLOPs on the CPU too (always on CUDA)")
    p.add_argument("--compare", nargs=2, metavar=("FLAGS_A", "FLAGS_B"),
                   help='run two setups in subprocesses and print them side by side, e.g. '
                        '--compare "--original-order" ""; each is appended to the other arguments')
    p.add_argument("--vs-original", action="store_true",
                   help="time our training loop against the original code's own loop instead (the other flags "
                        "are benchmarks/vs_original.py's: --seeds, --steps, --skip, ...; see its --help)")
    args = p.parse_args(argv)
    if min(args.frames, args.steps, args.rank, args.threads) < 1 or args.warmup < 0:
        raise UserError("--frames, --steps, --rank and --threads must be >= 1 and --warmup >= 0")
    if args.grid and not args.estimate:
        raise UserError("--grid goes with --estimate")
    if (args.frozen_dtype or args.videos != 1) and not args.estimate:
        raise UserError("--frozen-dtype and --videos go with --estimate")
    if args.videos < 1:
        raise UserError(f"--videos must be at least 1, got {args.videos}")
    base = bench_base(args)
    base.check_size(args.width, args.height, "--width and --height")
    base.check_frames(args.frames, "--frames")
    args.checkpointing = args.checkpointing or (base.default_granularity if args.gradient_checkpointing else "off")
    if args.checkpointing not in ("off", *base.checkpoint_granularities):
        raise UserError(f"--checkpointing {args.checkpointing}: {base.label} takes off or "
                        f"{', '.join(base.checkpoint_granularities)}")
    args.gradient_checkpointing = args.checkpointing != "off"
    return args


def bench_base(args):
    """The base of --model, or of --arch."""
    return base_for_model(args.model) if args.model else estimate.base_of_arch(args.arch)


def split_compare(argv: list[str]) -> tuple[list[str], tuple[str, str] | None]:
    """Take `--compare A B` out by hand: argparse would read a value such as "--compile" as an option."""
    if "--compare" not in argv:
        return argv, None
    i = argv.index("--compare")
    if len(argv) < i + 3:
        raise UserError('--compare takes two quoted flag sets, e.g. --compare "--original-order" ""')
    return argv[:i] + argv[i + 3:], (argv[i + 1], argv[i + 2])


# ---------------------------------------------------------------- models and data

def build_components(args, device: torch.device, dtype: torch.dtype) -> Components:
    """Load `--model`, or build the `--arch` pipeline with random weights (nothing is downloaded)."""
    if args.model:
        return load_components(args.model, device, dtype)
    base = estimate.base_of_arch(args.arch)
    if args.arch == "tiny":
        with tempfile.TemporaryDirectory(prefix="md_bench_") as tmp:
            return load_components(str(base.build_tiny(Path(tmp) / "tiny", seed=0)), device, dtype)
    torch.manual_seed(0)
    return base.random_components(args.arch, device, dtype)


def load_clip(args) -> torch.Tensor:
    """(F, 3, H, W) pixels in [-1, 1]: the first --frames frames of --video, or a synthetic clip."""
    from utils.training.dataset import to_pixel_values
    from utils.tools.synthetic import moving_shape_frames
    from utils.io.video_io import read_frames, video_info

    if args.video is None:
        frames = moving_shape_frames(args.frames, (args.width, args.height))
    else:
        count = video_info(args.video).num_frames
        if count < args.frames:
            logger.warning("%s has %d frames; repeating them to get %d", args.video, count, args.frames)
        frames = read_frames(args.video, [i % count for i in range(args.frames)])
    return to_pixel_values(frames, args.width, args.height)


# ---------------------------------------------------------------- measuring

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the whole process's


def peak_memory_mb(device: torch.device) -> float:
    """max_memory_allocated on CUDA; the peak resident set size (whole process) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # every device


def spatial_skipped(seed: int) -> bool:
    """Whether train_step skips the spatial loss when seeded with `seed` (its first draw)."""
    random.seed(seed)
    return random.uniform(0, 1) < ts.SPATIAL_SKIP_PROB


def peak_tflops(device: torch.device, precision: str, tf32: bool) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = "tf32" if precision == "fp32" and tf32 else precision
    for model, peaks in PEAK_TFLOPS:
        if model.lower() in name.lower():
            return peaks[key]
    return None


# ---------------------------------------------------------------- the training step

class TrainBench:
    """One clip's latents, both LoRA paths and their optimisers on the UNet: what a step needs."""

    def __init__(self, args, components: Components, latents: torch.Tensor, device: torch.device,
                 frame_latents: torch.Tensor | None = None):
        self.args, self.c, self.unet, self.latents, self.device = args, components, components.denoiser, latents, device
        self.frame_latents = frame_latents  # per-frame image latents, for a base whose VAE mixes frames
        self.original = args.original_order
        self.reencode = args.no_prompt_cache or self.original
        self.fused = not (args.no_fused_adam or self.original)  # the trainer fuses on every device
        mixed = args.precision != "fp32"
        self.autocast = partial(torch.autocast, device.type, DTYPES[args.precision]) if mixed else nullcontext
        use_scaler = args.precision == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.spatial = spatial_adapter_names(1)[0]
        torch.manual_seed(args.seed)  # LoRA init
        for name, path in ((TEMPORAL, TEMPORAL), (self.spatial, SPATIAL)):
            # trainable LoRA weights in fp32 under fp16/bf16, as the trainer makes them
            add_adapter(self.unet, name, components.lora_targets(path), args.rank, LORA_DROPOUT, dtype=torch.float32)
        params = {name: adapter_parameters(self.unet, name) for name in (TEMPORAL, self.spatial)}
        self.adapters = ts.Adapters([self.spatial], params, lora_layers(self.unet), TEMPORAL)
        self.optimisers = self._make_optimisers(params)
        self.prompts = PromptCache(components)
        self.settings = ts.StepSettings()
        self.attention = self._set_attention(args.attention)
        if args.gradient_checkpointing:
            enable_gradient_checkpointing(self.unet, components.base.checkpoint_targets(self.unet, args.checkpointing))
        self.unet.train()

    def _make_optimisers(self, params):
        from diffusers.optimization import get_scheduler

        from utils.training.trainer import Optimisers

        fused = {"fused": True} if self.fused else {}
        optimizers = {name: torch.optim.AdamW(plist, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, **fused)
                      for name, plist in params.items()}
        schedulers = {name: get_scheduler("constant", optimizer=o) for name, o in optimizers.items()}
        return Optimisers(optimizers, schedulers)

    def _set_attention(self, kind: str) -> str:
        if kind == "eager":
            from diffusers.models.attention_processor import AttnProcessor

            self.unet.set_attn_processor(AttnProcessor())
            return "eager"
        return self.c.base.set_attention_backend(self.unet, xformers=kind == "xformers")

    def compile(self) -> None:
        self.unet.compile()

    def embeddings(self) -> torch.Tensor:
        if self.reencode:
            return self.c.encode_prompts([self.args.prompt])
        return self.prompts([self.args.prompt])

    def _backward(self, loss, retain_graph=False):
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward(retain_graph=retain_graph)

    def step(self, seed: int) -> ts.StepLosses:
        """One whole optimisation step (both paths), seeded."""
        seed_everything(seed)
        if self.original:
            return self._original_step()
        losses = self.forward_backward_seeded()
        names = [n for n, ps in self.adapters.params.items() if any(p.grad is not None for p in ps)]
        self.optimisers.step(names, list(self.optimisers.schedulers), self.adapters.params, self.scaler)
        return losses

    def forward_backward(self, seed: int) -> ts.StepLosses:
        """Our step's forward and backward passes only (gradients are left in .grad)."""
        seed_everything(seed)
        return self.forward_backward_seeded()

    def forward_backward_seeded(self) -> ts.StepLosses:
        return ts.train_step(
            self.c, self.latents, self.embeddings(), self.adapters, self.spatial,
            self.settings, backward=self._backward, autocast=self.autocast, frame_latents=self.frame_latents,
        )

    def zero_grad(self) -> None:
        for optimizer in self.optimisers.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def _original_step(self) -> ts.StepLosses:
        """The original's order, drawing the same random numbers as train_step (same losses)."""
        latents, scheduler, base = self.latents, self.c.scheduler, self.c.base
        embeddings = self.embeddings()
        skip_spatial = random.uniform(0, 1) < ts.SPATIAL_SKIP_PROB
        noise = ts.sample_noise(latents, self.settings.use_offset_noise, self.settings.offset_noise_strength)
        timesteps = base.draw_timesteps(scheduler, latents.shape[0], latents.device)
        noisy = base.add_noise(scheduler, latents, noise, timesteps)
        target = base.target(scheduler, latents, noise, timesteps)
        loss_spatial = None
        if not skip_spatial:
            self.adapters.use(active=[self.spatial], trainable=[self.spatial])
            frame_in, frame_target = ts.spatial_sample(self.c, noisy, target, timesteps, self.settings, None,
                                                       self.frame_latents)
            with self.autocast():
                pred = self.c.predict(frame_in, timesteps, embeddings)
            loss_spatial = F.mse_loss(pred[:, :, 0].float(), frame_target.float())
        # The temporal forward runs while the spatial graph is alive; the spatial LoRA still
        # takes gradients from it (wasted work in the original), through clones of its weights
        # so the in-place spatial optimiser step below does not break the temporal backward.
        active = [TEMPORAL] + ([] if skip_spatial else [self.spatial])
        self.adapters.use(active=active, trainable=active)
        with self._cloned_weights(None if skip_spatial else self.spatial):
            with self.autocast():
                pred = self.c.predict(noisy, timesteps, embeddings)
            anchor = torch.randint(0, pred.shape[2], (1,)).item()
            loss_temporal = ts.temporal_loss(pred, target, anchor)
            if loss_spatial is not None:
                self._backward(loss_spatial, retain_graph=True)
                self._optimiser_step(self.spatial)
            self._backward(loss_temporal)
            self._optimiser_step(TEMPORAL)
        if self.scaler is not None:
            self.scaler.update()
        with warnings.catch_warnings():  # a skipped spatial path has not stepped its optimiser
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            for lr_scheduler in self.optimisers.schedulers.values():
                lr_scheduler.step()
        self.zero_grad()
        return ts.StepLosses(None if loss_spatial is None else loss_spatial.item(), loss_temporal.item())

    def _optimiser_step(self, name: str) -> None:
        optimizer = self.optimisers.optimizers[name]
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()

    @contextmanager
    def _cloned_weights(self, adapter: str | None):
        """LoRA linears of `adapter` multiply by a clone of their weight, as the reference harness patched."""
        from peft.tuners.lora.layer import Linear as PeftLoraLinear

        layers = [] if adapter is None else [layer for layer in self.adapters.layers if adapter in layer.lora_A]
        modules = [m for layer in layers for m in (layer.lora_A[adapter], layer.lora_B[adapter])]
        lean = [(layer, layer.__class__) for layer in layers]
        for layer, _ in lean:  # peft's own forward calls lora_A/lora_B, so their patched forward runs
            layer.__class__ = PeftLoraLinear
        for m in modules:
            m.forward = partial(_cloned_linear, m)
        try:
            yield
        finally:
            for m in modules:
                del m.forward
            for layer, cls in lean:
                layer.__class__ = cls


def _cloned_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, module.weight.clone(), module.bias)


def count_train_flops(bench: TrainBench, seeds: list[int]) -> int:
    """Model FLOPs (no recomputation) of our forward/backward over the given steps' seeds.

    One skipped and one full step are counted and reused, since only the skip changes the work.
    """
    from torch.utils.flop_counter import FlopCounterMode

    per_kind = {}
    with checkpointing_paused(bench.unet):
        for seed in seeds:
            kind = spatial_skipped(seed)
            if kind not in per_kind:
                counter = FlopCounterMode(display=False)
                with counter:
                    bench.forward_backward(seed)
                bench.zero_grad()
                per_kind[kind] = counter.get_total_flops()
    return sum(per_kind[spatial_skipped(s)] for s in seeds)


# ---------------------------------------------------------------- the parts of one run

def time_caching(components: Components, pixels: torch.Tensor, device) -> tuple[torch.Tensor, float]:
    """VAE-encode the clip (what latent caching does once per clip), after a one-frame warm-up."""
    components.encode_video(pixels[None, :1])
    latents, seconds = timed(lambda: components.encode_video(pixels[None]), device)
    return latents.float(), seconds


def image_latents(components: Components, pixels: torch.Tensor) -> torch.Tensor | None:
    """Each frame encoded alone, for the spatial path of a base whose clip latents mix frames (Wan)."""
    return None if components.base.frames_are_images else components.encode_frames(pixels[None]).float()


def time_inversion(components: Components, latents: torch.Tensor, steps: int, device) -> float:
    """The base's inversion of the clip with the empty prompt, as the latent cache does (no LoRA)."""
    components.denoiser.eval()
    empty = components.encode_prompts([""])
    invert = components.base.invert
    invert(components, latents, empty, 1)  # warm-up
    _, seconds = timed(lambda: invert(components, latents, empty, steps), device)
    return seconds


def time_sampling(bench: TrainBench, args, device) -> tuple[float, float]:
    """One video: the base's sampler with guidance through the temporal LoRA, then VAE decode;
    (seconds, peak MB)."""
    unet, c = bench.unet, bench.c
    unet.eval()
    bench.adapters.use(active=[TEMPORAL], trainable=[])
    cond, uncond = c.encode_prompts([args.prompt, ""]).chunk(2)
    torch.manual_seed(args.seed)
    latents = torch.randn(c.base.latent_shape(1, args.frames, args.height, args.width), device=device)

    def sample(steps):
        with bench.autocast():
            out = c.base.sample(c, latents, cond, uncond, steps, args.guidance_scale)
        return c.decode_video(out)

    with checkpointing_paused(unet):
        sample(1)  # warm-up (and compilation with --compile)
        reset_peak_memory(device)
        _, seconds = timed(lambda: sample(args.sample_steps), device)
    return seconds, peak_memory_mb(device)


def time_training(bench: TrainBench, args, device) -> dict:
    seeds = [args.seed + i for i in range(args.warmup + args.steps)]
    reset_peak_memory(device)
    times, losses = [], []
    for i, seed in enumerate(seeds):
        step_losses, seconds = timed(lambda: bench.step(seed), device)
        if i >= args.warmup:
            times.append(seconds)
            losses.append([step_losses.spatial, step_losses.temporal])
    timed_seeds = seeds[args.warmup:]
    return {
        "train_s_per_step": statistics.median(times),
        "train_s_min": min(times),
        "train_s_max": max(times),
        "train_s_total": sum(times),
        "spatial_skipped_steps": sum(spatial_skipped(s) for s in timed_seeds),
        "peak_mem_mb": peak_memory_mb(device),
        "losses": losses,
        "timed_seeds": timed_seeds,
    }


def run(args) -> dict:
    """Measure one setup; returns the result dict printed as the JSON line."""
    from utils.cli import resolve_device

    device = torch.device(resolve_device(args.device))
    if args.precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs CUDA (the trainer refuses it on the CPU too); use bf16 or fp32")
    torch.set_num_threads(args.threads)
    if args.tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    load_start = os.getloadavg()[0]
    if args.arch != "tiny" and not args.model and device.type == "cpu":
        logger.warning("--arch %s on the CPU is very slow (a full-size model): expect minutes per step", args.arch)
    dtype = DTYPES[args.precision]
    seed_everything(args.seed)  # the same latents (sampled from the VAE posterior) in every setup
    components = build_components(args, device, dtype)
    pixels = load_clip(args).to(device, dtype)
    result = {"cache_s": None, "inversion_s": None, "sample_s_per_video": None, "sample_peak_mem_mb": None}

    if args.skip_caching:
        latents = components.encode_video(pixels[None]).float()
    else:
        latents, result["cache_s"] = time_caching(components, pixels, device)
        if not args.skip_inversion:
            result["inversion_s"] = time_inversion(components, latents, args.inversion_steps, device)

    bench = TrainBench(args, components, latents, device, image_latents(components, pixels))
    seeds = [args.seed + args.warmup + i for i in range(args.steps)]
    flops = count_train_flops(bench, seeds) if device.type == "cuda" or args.count_flops else None
    if args.compile:
        bench.compile()
    result.update(time_training(bench, args, device))
    peak = peak_tflops(device, args.precision, args.tf32)
    result["train_flops_per_step"] = None if flops is None else flops / args.steps
    result["mfu"] = None if flops is None or peak is None else flops / result["train_s_total"] / (peak * 1e12)

    if not args.skip_sampling:
        result["sample_s_per_video"], result["sample_peak_mem_mb"] = time_sampling(bench, args, device)

    setup = {k: v for k, v in vars(args).items() if k != "compare"}
    setup.update(attention=bench.attention, prompt_cache=not bench.reencode, fused_adam=bench.fused)
    result.update(
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        threads=args.threads,
        peak_mem_kind="cuda max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM) of the process",
        peak_tflops=peak,
        load_avg_1m=[round(load_start, 2), round(os.getloadavg()[0], 2)],
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        torch=torch.__version__,
        setup=setup,
    )
    return result


# ---------------------------------------------------------------- output

def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    return f"{value}{unit}"


def rows(r: dict) -> list[tuple[str, str, str]]:
    s = r["setup"]
    flops = r["train_flops_per_step"]
    return [
        ("train step (s)", _fmt(r["train_s_per_step"]),
         f"median of {s['steps']} (min {r['train_s_min']:.4g}, max {r['train_s_max']:.4g}); "
         f"spatial loss skipped on {r['spatial_skipped_steps']}"),
        ("peak memory, training (MB)", _fmt(r["peak_mem_mb"], ""), r["peak_mem_kind"]),
        ("latent caching (s)", _fmt(r["cache_s"]), "VAE encode of the clip"),
        ("noise-prior inversion (s)", _fmt(r["inversion_s"]), f"{s['inversion_steps']} steps (DDIM; Euler on flow bases)"),
        ("sampling (s/video)", _fmt(r["sample_s_per_video"]),
         f"{s['sample_steps']} steps of the base's sampler, guidance {s['guidance_scale']:g}, + VAE decode"),
        ("peak memory, sampling (MB)", _fmt(r["sample_peak_mem_mb"]), ""),
        ("train GFLOP/step", "n/a" if flops is None else f"{flops / 1e9:.4g}", "model FLOPs, no recomputation"),
        ("MFU", "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.2f}%",
         "n/a" if r["peak_tflops"] is None else f"of {r['peak_tflops']:g} TFLOP/s peak"),
    ]


def describe(r: dict) -> str:
    s = r["setup"]
    model = s["model"] or f"{s['arch']} (random weights)"
    flags = [name for name in ("original_order", "compile", "tf32") if s[name]]
    if s.get("checkpointing", "off") != "off":
        flags.append(f"checkpointing {s['checkpointing']}")
    return (f"{model}, {s['width']}x{s['height']}x{s['frames']} frames, rank {s['rank']}, "
            f"{r['device']} ({r['device_name']}), {r['threads']} threads, {s['precision']}, "
            f"attention {s['attention']}, prompt cache {'on' if s['prompt_cache'] else 'off'}, "
            f"fused AdamW {'on' if s['fused_adam'] else 'off'}" + "".join(f", {f}" for f in flags)
            + f"; load avg {r['load_avg_1m'][0]} -> {r['load_avg_1m'][1]}")


def print_result(r: dict) -> None:
    print(describe(r))
    width = max(len(name) for name, _, _ in rows(r))
    for name, value, note in rows(r):
        print(f"  {name:<{width}}  {value:>10}  {note}")


def print_comparison(flag_sets, results) -> None:
    for label, flags, r in zip("AB", flag_sets, results):
        print(f"{label} [{flags or 'defaults'}]: {describe(r)}")
    table_a, table_b = rows(results[0]), rows(results[1])
    width = max(len(name) for name, _, _ in table_a)
    print(f"  {'':<{width}}  {'A':>10}  {'B':>10}  {'B/A':>6}")
    for (name, a, _), (_, b, _) in zip(table_a, table_b):
        try:
            ratio = f"{float(b.rstrip('%')) / float(a.rstrip('%')):.3g}"
        except (ValueError, ZeroDivisionError):
            ratio = ""
        print(f"  {name:<{width}}  {a:>10}  {b:>10}  {ratio:>6}")


def run_compare(base_argv: list[str], flag_sets: tuple[str, str]) -> dict:
    """Each setup in its own process, so its peak memory is its own."""
    results = []
    for flags in flag_sets:
        cmd = [sys.executable, str(Path(__file__).resolve()), *base_argv, *shlex.split(flags)]
        logger.info("running setup [%s]", flags or "defaults")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise UserError(f"setup [{flags}] failed with exit code {proc.returncode} (its error is above)")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print_comparison(flag_sets, results)
    a, b = results
    ratios = {k: b[k] / a[k] for k in ("train_s_per_step", "peak_mem_mb", "sample_s_per_video")
              if a.get(k) and b.get(k) is not None}
    return {"compare": list(flag_sets), "results": results, "b_over_a": ratios}


# ---------------------------------------------------------------- --estimate

def architecture(args) -> dict:
    """The sizes of --model's folder or of --arch (base.architecture)."""
    base = bench_base(args)
    return base.folder_architecture(args.model) if args.model else base.architecture(args.arch)


def predict(args, target: str = "cuda") -> dict:
    base, sizes = bench_base(args), architecture(args)
    setup = estimate.Setup("model" if args.model else args.arch, args.width, args.height, args.frames, args.rank,
                           args.precision, args.checkpointing, args.frozen_dtype or "", args.videos)
    model = estimate.build_meta_denoiser(base, sizes["denoiser"], args.rank, args.videos)
    return estimate.estimate_denoiser(base, model, setup, sizes, target=target)


def run_estimate(args):
    """The prediction for the setup, or {"grid": [one per setup]}."""
    if args.grid:
        if args.model or args.arch == "tiny":
            raise UserError(f"--grid is for a full-size --arch ({', '.join(estimate.all_archs())})")
        results = estimate.grid(args.arch, args.rank)
        print_estimates(results)
        return {"grid": results}
    result = predict(args)
    print_estimates([result])
    return result


def peak_cpu_allocations(fn) -> int:
    """Peak bytes held by torch's CPU allocator during fn(), above what it held before.

    Read from the profiler's memory events (every allocation and free, with its size): unlike
    RSS it sees only tensors, and unlike tracemalloc it sees torch's allocator.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def peak_cuda_allocations(fn, device) -> int:
    """Peak of `max_memory_allocated` during fn(), above what was allocated before."""
    sync(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - start


def check_estimate(args) -> dict:
    """One real step, measured, beside the prediction of the same step: on a GPU the CUDA
    prediction against max_memory_allocated; on the CPU (fp32) the CPU prediction against the
    allocator's events."""
    from utils.cli import resolve_device

    device = torch.device(resolve_device(args.device))
    if device.type == "cpu" and args.precision != "fp32":
        raise UserError("--estimate-check on the CPU is for fp32 (--precision fp32)")
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    components = build_components(args, device, DTYPES[args.precision])
    pixels = load_clip(args).to(device, DTYPES[args.precision])
    latents = components.encode_video(pixels[None]).float()
    bench = TrainBench(args, components, latents, device, image_latents(components, pixels))
    seed = next(s for s in range(args.seed, args.seed + 100) if not spatial_skipped(s))  # both losses
    bench.step(seed)  # warm-up: the AdamW state and the prompt cache exist before the measured step
    if device.type == "cuda":
        measured = peak_cuda_allocations(lambda: bench.step(seed), device)
    else:
        measured = peak_cpu_allocations(lambda: bench.step(seed))
    predicted = predict(args, target=device.type)
    result = {k: predicted[k] for k in ("width", "height", "frames", "rank", "precision", "checkpointing")}
    result.update(arch=predicted["arch"], device=device.type, predicted_step_mb=predicted["step_above_start_bytes"] / 2**20,
                  measured_step_mb=measured / 2**20, load_avg_1m=round(os.getloadavg()[0], 2))
    result["measured_over_predicted"] = measured / predicted["step_above_start_bytes"]
    print(f"{predicted['arch']} {args.width}x{args.height}x{args.frames}, rank {args.rank}, {args.precision}, "
          f"checkpointing {args.checkpointing}, {device.type}: memory a training step adds, predicted "
          f"{result['predicted_step_mb']:.1f} MB, measured {result['measured_step_mb']:.1f} MB "
          f"(measured/predicted {result['measured_over_predicted']:.3f})")
    return result


def print_estimates(results: list[dict]) -> None:
    """One row per setup: the step's breakdown, each phase's peak, the run's peak; no time (not measured)."""
    print("predicted (traced on meta tensors, CUDA autocast, flash attention and dropout emulated); GB = GiB of "
          "max_memory_allocated, cuBLAS workspaces included, cuDNN's not")
    print(f"{'size':<12} {'prec':<5} {'frozen':<6} {'ckpt':<6} {'videos':>6} {'weights':>8} {'LoRA+opt':>8} "
          f"{'acts':>7} {'step':>7} {'cache':>7} {'invert':>7} {'valid':>7} {'peak GB':>8} {'TFLOP':>7}")
    for r in results:
        lora = r["lora_params_gb"] + r["lora_grads_at_peak_gb"] + r["optimizer_state_gb"]
        phases = [r["phases"].get(name, {}).get("peak_gb") for name in ("caching", "inversion", "validation")]
        print(f"{r['width']}x{r['height']}x{r['frames']:<4} {r['precision']:<5} {r['frozen_dtype']:<6} "
              f"{r['checkpointing']:<6} {r['videos']:>6} {r['weights_gb'] + r['vae_gb']:>8.2f} {lora:>8.2f} "
              f"{r['activations_at_peak_gb']:>7.2f} {r['step_peak_gb']:>7.2f} "
              + " ".join("    n/a" if v is None else f"{v:>7.2f}" for v in phases)
              + f" {r['predicted_peak_gb']:>8.2f} {r['flops_per_step'] / 1e12:>7.1f}")


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--vs-original" in argv:  # our loop against the original's own (benchmarks/vs_original.py)
        from benchmarks import vs_original

        return vs_original.main([a for a in argv if a != "--vs-original"])
    base, flag_sets = split_compare(argv)
    if flag_sets is not None:
        parse_args(base)  # fail early on a bad common flag
        result = run_compare(base, flag_sets)
    else:
        args = parse_args(argv)
        if args.estimate_check:
            result = check_estimate(args)
        elif args.estimate:
            result = run_estimate(args)
        else:
            result = run(args)
            print_result(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
