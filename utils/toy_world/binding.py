"""The binding probe: how fast a fresh UNet learns to use one caption word.

    history = binding(model_dir, word="motion", steps=400)

A fresh UNet of the pretraining architecture is trained on a handful of centred clips whose
captions differ only in `word` (motion: a red circle moving left / right / up / down; sign: moving
left / right; color: a circle moving left in each colour; shape: a red subject of each shape moving
left), with the base's frozen VAE and text encoder, the base's prediction type, and t drawn from
[500, 1000): the noise levels where the prompt alone must decide the layout. Every `every` steps it prints the
*swap ratio*: the loss with the captions rotated among the clips over the loss with the right
ones, at t = 950, 800 and 600. 1.0 means the word is not used at all; a word the UNet has bound
raises it (a colour word reaches ~1.5 within 200 steps on this CPU).

With four directions the rotation swaps two axes (left with down, up with right) and two signs,
so the axis alone raises the ratio; `sign` measures the sign alone (it stayed at 1.00 through 1500
steps, docs/toy_world.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from utils.toy_world import world
from utils.toy_world.base_parts import UNET_CONFIG, caption_embeddings, clip_latents, diffusion_target

logger = logging.getLogger(__name__)

WORDS = ("motion", "sign", "color", "shape")
PROBE_TIMESTEPS = (950, 800, 600)


def word_specs(word: str) -> list[world.ClipSpec]:
    """Centred clips that differ only in `word`."""
    if word == "motion":
        combos = [("circle", "red", m) for m in ("left", "right", "up", "down")]
    elif word == "sign":  # rotating two captions swaps them: only the direction's sign differs
        combos = [("circle", "red", m) for m in ("left", "right")]
    elif word == "color":
        combos = [("circle", c, "left") for c in world.COLORS]
    elif word == "shape":
        combos = [(s, "red", "left") for s in world.SHAPES]
    else:
        raise ValueError(f"unknown caption word {word!r}; use one of {WORDS}")
    return [world.centered_spec(*combo) for combo in combos]


def swap_ratio(unet, scheduler, latents: torch.Tensor, context: torch.Tensor, timestep: int,
               repeats: int = 8, seed: int = 5) -> float:
    """Loss with each clip's caption replaced by the next clip's, over the loss with its own."""
    rotated = context.roll(1, dims=0)
    losses = {"own": 0.0, "swapped": 0.0}
    generator = torch.Generator().manual_seed(seed)
    timesteps = torch.full((len(latents),), timestep)
    with torch.no_grad():
        for _ in range(repeats):
            noise = torch.randn(latents.shape, generator=generator)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            target = diffusion_target(scheduler, latents, noise, timesteps)
            for name, ctx in (("own", context), ("swapped", rotated)):
                pred = unet(noisy, timesteps, encoder_hidden_states=ctx).sample
                losses[name] += torch.nn.functional.mse_loss(pred, target).item()
    return losses["swapped"] / losses["own"]


def encode_clips(model_dir: Path, specs: list[world.ClipSpec]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled VAE latents (N, 4, F, h, w) of the clips and their caption states (N, 77, D)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir / "vae").eval()
    return clip_latents(vae, specs), caption_embeddings(model_dir, [s.caption for s in specs])[: len(specs)]


def binding(model_dir: str | Path, word: str = "motion", steps: int = 400, every: int = 100,
            lr: float = 1e-3, seed: int = 0, repeats: int = 8) -> list[dict]:
    """Train a fresh UNet on the clips of `word_specs(word)`; the swap ratios every `every` steps."""
    from diffusers import DDPMScheduler, UNet3DConditionModel

    model_dir = Path(model_dir)
    latents, context = encode_clips(model_dir, word_specs(word))
    scheduler = DDPMScheduler.from_pretrained(model_dir / "scheduler")
    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**UNET_CONFIG)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    history, started = [], time.time()
    for step in range(1, steps + 1):
        noise = torch.randn(latents.shape)
        timesteps = torch.randint(500, scheduler.config.num_train_timesteps, (len(latents),))
        pred = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(pred, diffusion_target(scheduler, latents, noise, timesteps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            unet.eval()
            ratios = {t: round(swap_ratio(unet, scheduler, latents, context, t, repeats), 4) for t in PROBE_TIMESTEPS}
            unet.train()
            history.append({"step": step, "loss": round(loss.item(), 4), "swap_ratio": ratios,
                            "seconds": round(time.time() - started, 1)})
            logger.info("%s: step %d  loss %.4f  swap ratio %s", word, step, loss.item(), ratios)
    return history
