"""In-process A/B of the lean layers (models/fast_layers.py) against the stock diffusers/peft classes.

    python benchmarks/ab_lean_layers.py --model ../shared/compat/original_md/tiny_t2v \\
        --video ../shared/compat/original_md/train_video/car-turn-64x64-8f.mp4 --threads 1 --rounds 30 --per-round 3

One trainer loop (`profile_step.build_loop`: the trainer's own `TrainingLoop` on benchmark.py's
models and clip) runs `optimisation_step` in rounds; each round runs every setup, in turn, for
`--per-round` steps, swapping the layer classes in place (same weights, same adapters):
  * stock: peft's LoRA Linear, diffusers' Attention and AttnProcessor2_0;
  * lean attention: LeanAttention only;
  * lean: LeanAttention, LeanLoraLinear and LeanSdpaProcessor (what the trainer runs).
Interleaving makes a slow spell of the machine hit every setup alike. Prints the mean and median
ms per step of each setup and their ratio to stock, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402
from peft.tuners.lora.layer import Linear as PeftLoraLinear  # noqa: E402

import benchmark  # noqa: E402
import profile_step  # noqa: E402
from models.fast_layers import LeanAttention, LeanLoraLinear, LeanSdpaProcessor  # noqa: E402
from models.lora import lora_layers  # noqa: E402
from utils.cli import run_cli  # noqa: E402

SETUPS = ("stock", "lean_attention", "lean")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30, help="rounds; each runs every setup (default 30)")
    p.add_argument("--per-round", type=int, default=3, help="steps per setup and round (default 3)")
    own, rest = p.parse_known_args(argv)
    defaults = ["--rank", "4", "--steps", "1", "--warmup", "0", "--device", "cpu", "--skip-sampling"]
    return argparse.Namespace(**vars(benchmark.parse_args(defaults + rest)), **vars(own))


def use_setup(unet: torch.nn.Module, setup: str) -> None:
    """Swap the attention and LoRA layer classes (and the attention processor) to `setup`'s."""
    lean_attention = setup != "stock"
    lean = setup == "lean"
    for module in unet.modules():
        if isinstance(module, Attention):
            module.__class__ = LeanAttention if lean_attention else Attention
    for layer in lora_layers(unet):
        layer.__class__ = LeanLoraLinear if lean else PeftLoraLinear
    unet.set_attn_processor(LeanSdpaProcessor() if lean else AttnProcessor2_0())


def run_rounds(loop, args) -> dict[str, list[float]]:
    """Per-step seconds of every setup, interleaved round by round."""
    times = {setup: [] for setup in SETUPS}
    step = 0
    for setup in SETUPS:  # warm-up: one step of each
        use_setup(loop.c.denoiser, setup)
        step += 1
        loop.optimisation_step(step)
    for _ in range(args.rounds):
        for setup in SETUPS:
            use_setup(loop.c.denoiser, setup)
            for _ in range(args.per_round):
                step += 1
                start = time.perf_counter()
                loop.optimisation_step(step)
                times[setup].append(time.perf_counter() - start)
    use_setup(loop.c.denoiser, "lean")
    return times


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    args.warmup, args.steps = 0, 3 + args.rounds * args.per_round * len(SETUPS)  # build_loop sizes the run
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="md_ab_") as tmp:
        loop = profile_step.build_loop(args, Path(tmp) / "run")
        times = run_rounds(loop, args)
        loop.acc.end_training()
    stock = statistics.mean(times["stock"])
    result = {setup: {"mean_ms": 1000 * statistics.mean(t), "median_ms": 1000 * statistics.median(t),
                      "mean_over_stock": statistics.mean(t) / stock} for setup, t in times.items()}
    result.update(rounds=args.rounds, per_round=args.per_round, threads=args.threads,
                  load_avg_1m=[round(load, 2), round(os.getloadavg()[0], 2)])
    print(f"{args.rounds} rounds x {args.per_round} steps per setup, {args.threads} threads, "
          f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    for setup in SETUPS:
        r = result[setup]
        print(f"  {setup:<15} mean {r['mean_ms']:7.2f} ms  median {r['median_ms']:7.2f} ms  "
              f"mean / stock {r['mean_over_stock']:.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
