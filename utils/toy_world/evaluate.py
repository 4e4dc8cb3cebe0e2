"""Sampling a pipeline on toy-world prompts with the project's sampler, and scoring what comes out.

    report = evaluate(model_dir, combos, samples_per_prompt=2, num_steps=25, guidance_scale=4.0)

Each prompt is sampled once with batch `samples_per_prompt` (seed = the prompt's index), through
`utils.inference.generate.sample_video`, the very sampler the inference scripts use.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from utils.toy_world import world
from utils.toy_world.score import ClipScore, motion_by_family, path_spread, score_clip, size_by_shape, summarize

logger = logging.getLogger(__name__)


def parse_caption(text: str) -> tuple[str, str, str]:
    """(shape, colour, motion) of a world caption such as "a red circle moving left"."""
    words = text.strip().rstrip(".").lower().split()
    for motion, phrase in world.MOTION_PHRASES.items():
        if len(words) >= 3 and " ".join(words[3:]) == phrase and words[0] == "a":
            color, shape = words[1], words[2]
            if color in world.COLORS and shape in world.SHAPES:
                return shape, color, motion
    raise ValueError(f"not a toy-world caption: {text!r} (expected e.g. {world.caption('circle', 'red', 'left')!r})")


def sample_prompt(components, prompt: str, seed: int, count: int, num_steps: int,
                  guidance_scale: float) -> np.ndarray:
    """uint8 (count, F, H, W, 3) clips for `prompt`, from the project's sampler."""
    from utils.inference.generate import GenerationSettings, sample_video

    settings = GenerationSettings(prompt=prompt, batch_size=count, width=world.SIZE, height=world.SIZE,
                                  num_frames=world.clip_frames(components.base.name), num_steps=num_steps,
                                  guidance_scale=guidance_scale)
    return sample_video(components, settings, seed=seed).numpy()


def evaluate(model_dir: str | Path, combos: list[tuple[str, str, str]], samples_per_prompt: int = 2,
             num_steps: int = 25, guidance_scale: float = 4.0, video_dir: str | Path | None = None) -> dict:
    """Sample every (shape, colour, motion) prompt and score it; optionally write the clips."""
    from models.bases import load_components
    from utils.io.video_io import write_video

    components = load_components(str(model_dir))
    scores: list[ClipScore] = []
    per_prompt = []
    started = time.time()
    for index, (shape, color, motion) in enumerate(combos):
        prompt = world.caption(shape, color, motion)
        clips = sample_prompt(components, prompt, index, samples_per_prompt, num_steps, guidance_scale)
        for n, clip in enumerate(clips):
            score = score_clip(clip, shape, color, motion)
            scores.append(score)
            per_prompt.append({"prompt": prompt, "seed": index, "sample": n, **score.as_dict()})
            if video_dir is not None:
                write_video(Path(video_dir) / f"{prompt.replace(' ', '_')}_{n}.mp4", clip, world.FPS)
    motions = [m for _, _, m in combos for _ in range(samples_per_prompt)]
    summary = summarize(scores)
    summary.update(sampling_seconds=round(time.time() - started, 1), frames=world.clip_frames(components.base.name),
                   num_steps=num_steps, guidance_scale=guidance_scale, samples_per_prompt=samples_per_prompt,
                   motion_by_family=motion_by_family(scores, motions), spread=path_spread(scores, motions),
                   size_by_shape=size_by_shape(scores))
    logger.info("colour %.3f  shape %.3f  motion %.3f  over %d clips", summary["color_accuracy"],
                summary["shape_accuracy"], summary["motion_accuracy"], summary["clips"])
    return {"summary": summary, "clips": per_prompt}


def rendered_spread(per_caption: int = 2, seed: int = 7, frames: int = world.FRAMES) -> dict:
    """`path_spread` of rendered family members, read by the detector: the spread a base that
    samples its families faithfully would show (`per_caption` clips of every shape x colour x family)."""
    specs = world.family_specs(per_caption, seed, frames=frames)
    scores = [score_clip(world.render(s, frames), s.shape, s.color, s.motion) for s in specs]
    return path_spread(scores, [s.motion for s in specs])


SWAPS = {
    "motion": lambda s, c, m: (s, c, {"left": "right", "right": "left", "up": "down", "down": "up",
                                      "still": "left"}.get(m, "still")),
    "color": lambda s, c, m: (s, {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green"}[c], m),
    "shape": lambda s, c, m: ({"circle": "square", "square": "triangle", "triangle": "circle"}[s], c, m),
}


def _noised_world_clips(model_dir: str | Path, combos, seed: int):
    """(components, clean latents of the centred clips of `combos`, a DDPM scheduler of the
    model's schedule, a seeded generator for the noise): what both probes start from."""
    from diffusers import DDPMScheduler

    from models.bases import load_components

    components = load_components(str(model_dir))
    clips = np.stack([world.render(world.centered_spec(*c)) for c in combos])
    pixels = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    torch.manual_seed(seed)
    latents = components.encode_video(pixels)
    scheduler = DDPMScheduler.from_config(components.scheduler.config)
    return components, latents, scheduler, torch.Generator().manual_seed(seed)


@torch.no_grad()
def caption_reliance(model_dir: str | Path, timesteps=(200, 500, 800), seed: int = 0, combos=None) -> dict:
    """How much the UNet's noise prediction uses each part of the caption.

    For one clip of every base prompt, the denoising loss with the true caption is compared with
    the loss when the motion, colour or shape word is swapped for another: a part the model
    ignores leaves the loss unchanged (ratio 1.0).
    """
    from utils.toy_world.base_parts import diffusion_target

    combos = combos or world.all_combinations(world.BASE_MOTIONS)
    components, latents, scheduler, generator = _noised_world_clips(model_dir, combos, seed)
    report = {}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        steps = torch.full((len(latents),), t)
        noisy = scheduler.add_noise(latents, noise, steps)
        target = diffusion_target(scheduler, latents, noise, steps)
        losses = {}
        for part, swap in [("true", None), *SWAPS.items()]:
            prompts = [world.caption(*(swap(*c) if swap else c)) for c in combos]
            pred = components.predict(noisy, steps, components.encode_prompts(prompts))
            losses[part] = float(((pred - target) ** 2).mean())
        report[t] = {part: round(loss / losses["true"], 3) for part, loss in losses.items() if part != "true"}
    return report


@torch.no_grad()
def order_use(model_dir: str | Path, timesteps=(200, 500, 800, 950), seed: int = 0) -> dict:
    """How much the UNet's prediction depends on frame order, per timestep.

    ||f(R x) - R f(x)|| / ||f(x) - its mean over frames||, R = time reversal, on noised clips of
    every base motion: 0 means the UNet treats the clip as an unordered set of frames (its
    temporal attention alone is blind to order; only the temporal convs can see it).
    """
    combos = [("circle", "red", m) for m in world.BASE_MOTIONS]
    components, latents, scheduler, generator = _noised_world_clips(model_dir, combos, seed)
    context = components.encode_prompts([world.caption(*c) for c in combos])
    reverse = torch.arange(latents.shape[2] - 1, -1, -1)
    report = {}
    for t in timesteps:
        noisy = scheduler.add_noise(latents, torch.randn(latents.shape, generator=generator), torch.tensor([t]))
        out = components.predict(noisy, t, context)
        out_reversed = components.predict(noisy[:, :, reverse], t, context)
        spread = (out - out.mean(2, keepdim=True)).norm()
        report[t] = round(float((out[:, :, reverse] - out_reversed).norm() / spread), 3)
    return report


def contrast_centroids(frames: np.ndarray) -> np.ndarray:
    """(F, 2): per frame the x, y centroid of the pixels' contrast with the frame's background
    (the border's median; the clock band left out), the place where a blurry subject's mass is."""
    from utils.toy_world.detector import background_color

    frames = world.without_clock(frames).astype(np.float32)
    ys, xs = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]].astype(np.float32)
    centroids = []
    for frame in frames:
        contrast = np.abs(frame - background_color(frame)).sum(axis=-1)
        mass = max(float(contrast.sum()), 1e-6)
        centroids.append(((contrast * xs).sum() / mass, (contrast * ys).sum() / mass))
    return np.array(centroids)


@torch.no_grad()
def conditional_layout(model_dir: str | Path, prompts: list[str], timestep: int = 999, seeds: int = 8,
                       guidance_scale: float = 1.0) -> dict:
    """Where each prompt puts its subject, frame by frame, before sampling has chosen anything.

    The UNet's predicted clean clip from pure noise at `timestep` (the prompt's conditional mean;
    with guidance, extrapolated from the empty prompt's), averaged over `seeds` noise draws,
    decoded, and read by `contrast_centroids`: {prompt: (F, 2) centroids}. Two prompts whose
    layouts are the same cannot be told apart where sampling fixes the layout.
    """
    from models.bases import load_components

    return layouts_of(load_components(str(model_dir)), prompts, timestep, seeds, guidance_scale)


@torch.no_grad()
def layouts_of(components, prompts: list[str], timestep: int = 999, seeds: int = 8,
               guidance_scale: float = 1.0) -> dict:
    """`conditional_layout` with loaded components (and whatever adapters are active on them)."""
    scheduler = components.scheduler
    alpha = scheduler.alphas_cumprod[timestep]
    noise = torch.randn(seeds, 4, world.FRAMES, world.SIZE // 8, world.SIZE // 8,
                        generator=torch.Generator().manual_seed(0))
    steps = torch.full((seeds,), timestep)
    states = components.encode_prompts([*prompts, ""])
    empty = components.predict(noise, steps, states[-1:].expand(seeds, -1, -1))
    layouts = {}
    for index, prompt in enumerate(prompts):
        cond = components.predict(noise, steps, states[index : index + 1].expand(seeds, -1, -1))
        out = empty + guidance_scale * (cond - empty)
        # from v directly, not through the noise: under zero terminal SNR alpha is 0 at t = 999
        if scheduler.config.prediction_type == "v_prediction":
            clean = alpha.sqrt() * noise - (1 - alpha).sqrt() * out
        else:
            clean = (noise - (1 - alpha).sqrt() * out) / alpha.sqrt()
        frames = components.decode_video(clean.mean(0, keepdim=True))[0].numpy()
        layouts[prompt] = contrast_centroids(frames)
    return layouts
