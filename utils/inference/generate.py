"""Generating videos with MotionDirector LoRAs: the library behind both inference CLIs.

    components = prepare_model(model, [LoraRequest(folder, TEMPORAL, 1.0)], device, dtype)
    paths = generate_videos(components, settings, NoisePrior.from_folder(run / "cached_latents", hint))

Each video has its own seed; the seed alone fixes the cached training clip used for the noise
prior and the starting noise, so `--seed <the number in a file name>` regenerates that video.
Under `accelerate launch` the videos are shared out between the processes by index.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from models.bases import Components, VideoBase, base_for_model, load_components
from models.lora import activate, adapter_names, path_of
from models.lora_io import find_lora_file, load_adapter
from utils.cli import process_state, resolve_device
from utils.errors import UserError
from utils.inference.noise_prior import NoisePrior, mix_noise_prior, prepare_prior_latents
from utils.io.video_io import write_video

logger = logging.getLogger(__name__)

# The original's random seed range when none is given.
SEED_RANGE = (100, 10_000_000)
# Characters Windows forbids in file names; the original replaced them on Windows only, but a
# "/" in a prompt would make a sub-folder on Linux too, so we replace them everywhere.
UNSAFE_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1F]')
MAX_NAME_BYTES = 200  # file systems allow 255 bytes; leave room for "_<seed>_<n>.mp4"


@dataclass
class LoraRequest:
    folder: str | Path  # a .../lora/ folder (or one LoRA file), either format
    adapter_name: str  # models.lora.SPATIAL or TEMPORAL
    scale: float = 1.0


@dataclass
class GenerationSettings:
    """What to sample; None sizes, steps, guidance and fps take the base's defaults
    (`VideoBase.default_sampling`: ZeroScope's are the original's 384x384x16, 30 steps, 12)."""

    prompt: str
    negative_prompt: str | None = None
    output_dir: str = "./outputs/inference"
    batch_size: int = 1
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    num_steps: int | None = None
    guidance_scale: float | None = None
    fps: int | None = None
    seed: int | None = None
    noise_prior: float = 0.0
    repeat_num: int = 1
    overwrite: bool = False
    write_gif: bool = False  # the multi-path script of the original also wrote a GIF


def with_base_defaults(settings: GenerationSettings, base: VideoBase, model: str | None = None) -> GenerationSettings:
    """The settings with every None taken from the base's sampling defaults (for `model`'s folder)."""
    sampling = base.folder_sampling(model) if model else base.default_sampling
    defaults = dict(sampling, fps=base.default_fps)
    missing = {f.name: defaults[f.name] for f in fields(settings)
               if getattr(settings, f.name) is None and f.name in defaults}
    return replace(settings, **missing)


def check_settings(settings: GenerationSettings, base: VideoBase) -> None:
    """Refuse bad numbers before any model is loaded."""
    base.check_size(settings.width, settings.height, "--width and --height")
    base.check_frames(settings.num_frames, "--num-frames")
    if not 0.0 <= settings.noise_prior <= 1.0:
        raise UserError(f"--noise_prior must be in [0, 1], got {settings.noise_prior}")
    for flag, value in (("--num-frames", settings.num_frames), ("--num-steps", settings.num_steps),
                        ("--batch-size", settings.batch_size), ("--repeat_num", settings.repeat_num),
                        ("--fps", settings.fps)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")


# ----------------------------------------------------------------------------- model


def inference_device(requested: str | None) -> str:
    """The requested device (a missing GPU is an error), else this process's GPU or the CPU."""
    state = process_state()
    if requested is None and state.num_processes > 1:
        return str(state.device)  # one GPU per process under `accelerate launch`
    return resolve_device(requested)


def inference_dtype(device: str, base: VideoBase) -> torch.dtype:
    """The base's half precision on CUDA (fp16 as the original, bf16 for Wan), fp32 elsewhere
    (CPU half is slow and partly unsupported)."""
    return base.cuda_dtype if device.startswith("cuda") else torch.float32


def device_and_dtype(requested: str | None, base: VideoBase) -> tuple[str, torch.dtype]:
    device = inference_device(requested)
    return device, inference_dtype(device, base)


def prepare_model(model: str, loras: list[LoraRequest], device: str, dtype: torch.dtype,
                  xformers: bool = False, options: dict | None = None) -> Components:
    """Load the pipeline pieces, then the LoRAs at their scales, all active, denoiser in eval."""
    components = load_components(model, device, dtype, options)
    denoiser = components.denoiser
    for lora in loras:
        targets = components.lora_targets(path_of(lora.adapter_name), find_lora_file(lora.folder))
        file = load_adapter(denoiser, lora.folder, lora.adapter_name, targets, scale=lora.scale)
        logger.info("loaded the %s LoRA from %s at scale %g", lora.adapter_name, file, lora.scale)
    if loras:
        activate(denoiser, adapter_names(denoiser))
        denoiser.to(device)  # peft places adapters beside their layers; this only makes sure of it
    if xformers:
        components.base.set_attention_backend(denoiser, xformers=True)
    denoiser.eval()  # temporal convs use dropout
    return components


# ----------------------------------------------------------------------------- seeds and sharing


def repeat_seeds(seed: int | None, count: int) -> list[int]:
    """One seed per video: seed, seed + 1, ... or random ones in the original's range.

    The original reused one given seed for every repeat (same file name, so each repeat
    overwrote the last); consecutive seeds keep each video reproducible on its own.
    """
    if seed is not None:
        return [seed + i for i in range(count)]
    rng = random.Random()  # seeded from the OS, independently in every process
    return [rng.randint(*SEED_RANGE) for _ in range(count)]


def share_of(count: int, process_index: int, num_processes: int) -> list[int]:
    """Video indices for one process: i % num_processes == process_index, so no two write one video."""
    return [i for i in range(count) if i % num_processes == process_index]


def my_share(count: int) -> list[int]:
    """The video indices this process generates (all of them unless under `accelerate launch`)."""
    state = process_state()
    return share_of(count, state.process_index, state.num_processes)


def my_jobs(num_prompts: int, num_seeds: int) -> dict[int, list[int]]:
    """{prompt index: seed indices} this process generates: the prompt x seed pairs are dealt out
    in turn, so several prompts with one seed still keep every process busy."""
    pairs = [(p, i) for p in range(num_prompts) for i in range(num_seeds)]
    jobs: dict[int, list[int]] = {}
    for k in my_share(len(pairs)):
        prompt, seed = pairs[k]
        jobs.setdefault(prompt, []).append(seed)
    return jobs


# ----------------------------------------------------------------------------- noise prior


def initial_latents(settings: GenerationSettings, seed: int, inverted: torch.Tensor | None,
                    base: VideoBase) -> torch.Tensor:
    """(B, C, f, h, w) float32 on the CPU: seeded noise, mixed with the prior when p > 0.

    The noise comes from a CPU generator, so a seed gives the same video on every device.
    """
    shape = base.latent_shape(settings.batch_size, settings.num_frames, settings.height, settings.width)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if settings.noise_prior == 0 or inverted is None:
        return noise
    prior = prepare_prior_latents(inverted.float().cpu(), shape[0], shape[2], shape[3], shape[4])
    return mix_noise_prior(prior, noise, settings.noise_prior)


# ----------------------------------------------------------------------------- sampling and files


def sample_video(components: Components, settings: GenerationSettings, seed: int,
                 inverted: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """One sampling call: (B, F, H, W, 3) uint8 frames for `seed` (and the clip's inverted latents)."""
    settings = with_base_defaults(settings, components.base)
    latents = initial_latents(settings, seed, inverted, components.base).to(components.denoiser.device)
    cond, uncond = _prompt_embeddings(components, settings)
    latents = components.base.sample(components, latents, cond, uncond, settings.num_steps,
                                     settings.guidance_scale, progress=progress)
    return components.decode_video(latents)


def inverted_for(seed: int, settings: GenerationSettings, prior: NoisePrior | None, components):
    """The inverted latents `seed` starts from (None without a noise prior): its draw among the
    run's cached clips of the requested length."""
    if prior is None or settings.noise_prior <= 0:
        return None
    file = prior.pick(seed, settings.num_frames, components.base)
    logger.info("seed %d: noise prior %g from %s", seed, settings.noise_prior, file.name)
    return prior.inverted(file, components)


def _prompt_embeddings(components: Components, settings: GenerationSettings):
    prompts = [settings.prompt, settings.negative_prompt or ""]
    cond, uncond = components.encode_prompts(prompts).chunk(2)
    batch = settings.batch_size
    return cond.expand(batch, -1, -1), uncond.expand(batch, -1, -1)


def output_stem(prompt: str) -> str:
    """The original's file name for a prompt: spaces -> "_", commas and full stops dropped."""
    name = UNSAFE_CHARS.sub("_", prompt).replace(" ", "_").replace(",", "").replace(".", "")
    return name.encode()[:MAX_NAME_BYTES].decode(errors="ignore") or "video"


def free_path(folder: Path, stem: str, suffixes: list[str], overwrite: bool) -> Path:
    """`folder/stem` (without suffix) such that no file with any of `suffixes` exists there.

    Existing videos are kept: the name gets _1, _2, ... unless `overwrite`.
    """
    candidate, n = folder / stem, 0
    while not overwrite and any(candidate.with_name(candidate.name + s).exists() for s in suffixes):
        n += 1
        candidate = folder / f"{stem}_{n}"
    return candidate


def write_outputs(frames: torch.Tensor, settings: GenerationSettings, seed: int) -> list[Path]:
    """One `<prompt>_<seed>.mp4` (+ .gif) per batch item; `_b<j>` tells batch items apart."""
    folder = Path(settings.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    suffixes = [".mp4", ".gif"] if settings.write_gif else [".mp4"]
    written = []
    for j, video in enumerate(frames):
        stem = f"{output_stem(settings.prompt)}_{seed}"
        if len(frames) > 1:
            stem += f"_b{j}"
        base = free_path(folder, stem, suffixes, settings.overwrite)
        for suffix in suffixes:
            written.append(write_video(base.with_name(base.name + suffix), video, fps=settings.fps))
    return written


def generate_videos(components: Components, settings: GenerationSettings,
                    prior: NoisePrior | None = None, seeds: list[int] | None = None,
                    indices: list[int] | None = None) -> list[Path]:
    """Sample and write the videos of `indices` into `seeds` (default: this process's share of the
    `repeat_num` videos); returns the files."""
    settings = with_base_defaults(settings, components.base)
    seeds = seeds if seeds is not None else repeat_seeds(settings.seed, settings.repeat_num)
    show = process_state().is_local_main_process
    written = []
    for i in indices if indices is not None else my_share(len(seeds)):
        logger.info("video %d/%d: seed %d", i + 1, len(seeds), seeds[i])
        inverted = inverted_for(seeds[i], settings, prior, components)
        frames = sample_video(components, settings, seeds[i], inverted, progress=show)
        written += write_outputs(frames, settings, seeds[i])
    return written


def checked_noise_prior(settings: GenerationSettings, seeds: list[int], cache_dir: Path | None,
                        how_to_fix: str, base: VideoBase) -> NoisePrior | None:
    """The run's cached clips when the noise prior is on, checked before any model is loaded."""
    if settings.noise_prior <= 0:
        return None
    if cache_dir is None:
        raise UserError(f"a noise prior > 0 needs the training run's cached_latents/; {how_to_fix}")
    prior = NoisePrior.from_folder(cache_dir, how_to_fix)
    for seed in seeds:  # a frame-count mismatch fails now, not after loading
        prior.pick(seed, settings.num_frames, base)
    return prior


def run_generation(model: str, loras: list[LoraRequest], settings: GenerationSettings,
                   cache_dir: Path | None, how_to_fix: str, device: str | None = None,
                   xformers: bool = False, prompts: list[str] | None = None, options: dict | None = None) -> list[Path]:
    """Everything a CLI does: check, load, sample, write. `cache_dir` is the run's cached_latents/.

    `prompts` (default: settings.prompt alone) are each generated with the same seeds.
    """
    device = inference_device(device)  # a missing GPU fails before the model folder is read
    base = base_for_model(model, options)
    dtype = inference_dtype(device, base)
    settings = with_base_defaults(settings, base, model)
    check_settings(settings, base)
    prompts = prompts or [settings.prompt]
    seeds = repeat_seeds(settings.seed, settings.repeat_num)
    jobs = my_jobs(len(prompts), len(seeds))
    if not jobs:  # more processes than videos: nothing for this one to do
        return []
    mine = sorted({i for indices in jobs.values() for i in indices})
    prior = checked_noise_prior(settings, [seeds[i] for i in mine], cache_dir, how_to_fix, base)
    components = prepare_model(model, loras, device, dtype, xformers, options)
    written = []
    for p, indices in jobs.items():
        written += generate_videos(components, replace(settings, prompt=prompts[p]), prior, seeds, indices)
    return written
