"""Time one step of the toy world's UNet pretraining, plain and with the usual CPU speed-ups.

    for mode in fp32 bf16 compile classic_attention; do
        python benchmarks/toy_pretrain_step.py --mode $mode; done

The step is `utils.toy_world.pretrain`'s: `unet_loss` on a batch of `unet_batch` (16) clips (8
frames, 8x8 latents) with real caption states, backward, gradient clipping and AdamW, on the
shipped v2 UNet.
Modes: `fp32` as pretraining runs; `bf16` under CPU autocast; `compile` through `torch.compile`
(the first step, which compiles, is reported apart); `classic_attention`: diffusers'
`AttnProcessor` (matmul + softmax) instead of scaled-dot-product attention. Run each mode in its
own process on an idle machine. Prints one JSON line: the mode, the first step's seconds and the
median seconds per step after it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

MODES = ("fp32", "bf16", "compile", "classic_attention")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default="fp32")
    parser.add_argument("--base", default=str(REPO / "models" / "toy_world_v2"), help="toy-world pipeline folder")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after the first (and --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


@dataclass
class StepParts:
    model: torch.nn.Module  # what the step calls: the UNet, or its compiled wrapper
    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    latents: torch.Tensor
    context: torch.Tensor  # caption states, one per clip
    autocast: contextlib.AbstractContextManager


def step_parts(base: Path, mode: str) -> StepParts:
    """The pieces of one pretraining step in `mode`, with fixed random clips and captions."""
    from diffusers import DDIMScheduler, UNet3DConditionModel

    from utils.toy_world import world
    from utils.toy_world.base_parts import caption_embeddings
    from utils.toy_world.pretrain import PretrainSettings

    unet = UNet3DConditionModel.from_pretrained(base / "unet").train()
    if mode == "classic_attention":
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    batch = PretrainSettings().unet_batch
    gen = torch.Generator().manual_seed(0)
    captions = [world.caption(shape, color, "loop") for shape in world.SHAPES for color in world.COLORS]
    states = caption_embeddings(base, captions)
    context = states[torch.randint(0, len(states), (batch,), generator=gen)]
    latents = torch.randn(batch, unet.config.in_channels, world.FRAMES, unet.config.sample_size,
                          unet.config.sample_size, generator=gen)
    model = torch.compile(unet) if mode == "compile" else unet
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    scheduler = DDIMScheduler.from_pretrained(base / "scheduler")
    return StepParts(model, unet, torch.optim.AdamW(unet.parameters(), lr=1e-4), scheduler, latents, context,
                     autocast)


def main(argv: list[str] | None = None) -> None:
    from utils.toy_world.pretrain import unet_loss

    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    parts = step_parts(Path(args.base), args.mode)
    gen = torch.Generator().manual_seed(1)

    def step() -> float:
        start = time.perf_counter()
        with parts.autocast:
            loss = unet_loss(parts.model, parts.scheduler, parts.latents, parts.context, gen)
        parts.optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(parts.unet.parameters(), 1.0)
        parts.optimizer.step()
        return time.perf_counter() - start

    first = step()
    for _ in range(args.warmup):
        step()
    timed = [step() for _ in range(args.steps)]
    print(json.dumps({"mode": args.mode, "first_step_s": round(first, 2),
                      "s_per_step": round(statistics.median(timed), 3), "threads": args.threads}))


if __name__ == "__main__":
    main()
