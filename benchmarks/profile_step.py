"""Profile the real training loop (`utils.training.trainer`'s loop: data, step, optimisers, logging) on the CPU.

    python benchmarks/profile_step.py --model ../shared/compat/original_md/tiny_t2v \\
        --video ../shared/compat/original_md/train_video/car-turn-64x64-8f.mp4
    python benchmarks/profile_step.py --arch zeroscope --frames 2 --steps 2 --warmup 1
    python benchmarks/profile_step.py --python     # cProfile (Python functions) instead of torch.profiler

Models, clip and LoRA setup come from benchmark.py's flags (--model / --arch, --width, --height,
--frames, --rank, --threads; rank 4 and 2 threads by default here); the loop is the trainer's
own `TrainingLoop`, with TensorBoard logging on and no checkpoint inside the profiled steps.
Prints the top operators by self CPU time (torch.profiler), or the top Python functions by
own time (cProfile), over the profiled steps after the warm-up.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

import benchmark  # noqa: E402
from utils.training import trainer  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.training.config import load_config  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", action="store_true", help="cProfile the steps instead of torch.profiler")
    p.add_argument("--top", type=int, default=25, help="rows to print (default 25)")
    p.add_argument("--sort", default="self_cpu_time_total", help="torch.profiler sort key (default self_cpu_time_total)")
    own, rest = p.parse_known_args(argv)
    defaults = ["--rank", "4", "--steps", "20", "--warmup", "3", "--device", "cpu", "--skip-sampling"]
    bench = benchmark.parse_args(defaults + rest)
    return argparse.Namespace(**vars(bench), **vars(own))


def build_loop(args, run_dir: Path):
    """The trainer's loop on benchmark.py's models and clip, as `utils.training.trainer.run` wires it."""
    device = torch.device("cpu")
    benchmark.seed_everything(args.seed)
    components = benchmark.build_components(args, device, torch.float32)
    latents = components.encode_video(benchmark.load_clip(args)[None]).float()
    total = args.warmup + 1 + args.steps  # + 1: the profiler's own warm-up step
    cfg = load_config(str(REPO / "configs" / "config_tiny_cpu.yaml"), [
        f"output_dir={run_dir}", f"lora_rank={args.rank}", f"max_train_steps={total}",
        f"checkpointing_steps={total + 1}", "validation_data.sample_preview=false", "logger_type=tensorboard",
        f"seed={args.seed}", f"gradient_checkpointing={args.gradient_checkpointing}",
    ])
    accelerator = trainer.make_accelerator(cfg, run_dir)
    adapters = trainer.add_adapters(cfg, components, 1, None)
    optimisers = trainer.make_optimisers(cfg, adapters)
    trainer.prepare_denoiser(cfg, components)
    items = [{"latents": latents[0], "prompt": args.prompt, "index": 0}]
    return trainer.TrainingLoop(cfg, accelerator, components, adapters, optimisers, items, run_dir)


def profile_torch(loop, args) -> str:
    schedule = torch.profiler.schedule(skip_first=args.warmup, wait=0, warmup=1, active=args.steps, repeat=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule) as prof:
        after_step = loop.after_step
        loop.after_step = lambda step, item: (after_step(step, item), prof.step())
        loop.train(0)
    return prof.key_averages().table(sort_by=args.sort, row_limit=args.top)


def profile_python(loop, args) -> str:
    profiler = cProfile.Profile()
    after_step = loop.after_step

    def step_boundary(step, item):
        after_step(step, item)
        if step == args.warmup + 1:  # as torch.profiler: warm-up steps and one more are left out
            profiler.enable()

    loop.after_step = step_boundary
    loop.train(0)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(os.environ.get("PSORT", "tottime")).print_stats(args.top)
    return out.getvalue()


def dtype_lookup_ms(unet) -> tuple[float, float]:
    """Milliseconds per `unet.dtype`: diffusers' own lookup (walks every module) and ours (cached)."""
    from diffusers import ModelMixin

    timings = []
    for lookup in (lambda: ModelMixin.dtype.fget(unet), lambda: unet.dtype):
        lookup()
        start = time.perf_counter()
        for _ in range(10):
            lookup()
        timings.append((time.perf_counter() - start) * 100)
    return timings[0], timings[1]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="md_profile_") as tmp:
        loop = build_loop(args, Path(tmp) / "run")
        stock_ms, cached_ms = dtype_lookup_ms(loop.c.denoiser)
        modules = sum(1 for _ in loop.c.denoiser.modules())
        start = time.perf_counter()
        table = profile_python(loop, args) if args.python else profile_torch(loop, args)
        seconds = time.perf_counter() - start
        loop.acc.end_training()
    model = args.model or f"{args.arch} (random weights)"
    print(f"{model}, {args.width}x{args.height}x{args.frames}, rank {args.rank}, {args.threads} threads; "
          f"{args.steps} profiled steps after {args.warmup + 1}; whole loop {seconds:.2f} s")
    print(f"unet.dtype: {stock_ms:.3f} ms as diffusers looks it up ({modules} modules), {cached_ms:.4f} ms cached; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(table)


if __name__ == "__main__":
    sys.exit(run_cli(main))
