"""Generating videos with MotionDirector LoRAs: the library behind both inference CLIs.

    components = prepare_model(model, [LoraRequest(folder, TEMPORAL, 1.0)], device)
    paths = generate_videos(components, settings, NoisePrior.from_folder(run / "cached_latents"))

Each video has its own seed; the seed alone fixes the cached training clip used for the noise
prior and the starting noise, so `--seed <the number in a file name>` regenerates that video.
Under `accelerate launch` the videos are shared out between the processes by index.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from models.lora import activate, adapter_names
from models.lora_io import load_adapter
from models.pipeline import Components, decode_video, denoise, encode_prompts, load_components
from models.unet import set_attention_backend
from utils.ddim import mix_noise_prior, prepare_prior_latents
from utils.cli import process_state, resolve_device
from utils.errors import UserError
from utils.latent_cache import cached_files, invert_clip
from utils.prompts_file import read_prompts_file
from utils.video_io import write_video

logger = logging.getLogger(__name__)

VAE_SCALE = 8
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
    prompt: str
    negative_prompt: str | None = None
    output_dir: str = "./outputs/inference"
    batch_size: int = 1
    width: int = 384
    height: int = 384
    num_frames: int = 16
    num_steps: int = 30
    guidance_scale: float = 12.0
    fps: int = 8
    seed: int | None = None
    noise_prior: float = 0.0
    repeat_num: int = 1
    overwrite: bool = False
    write_gif: bool = False  # the multi-path script of the original also wrote a GIF


# ----------------------------------------------------------------------------- command line


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both inference scripts share, with the original's short names and defaults."""
    add = parser.add_argument
    add("-m", "--model", required=True, help="diffusers text-to-video folder (e.g. ZeroScope) or hub id")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("-p", "--prompt", help="text prompt to generate")
    prompt.add_argument("--prompts_file", help="text file of prompts, one a line (blank lines and # comments "
                                               "skipped): every prompt is generated with every seed")
    add("-n", "--negative-prompt", default=None, help="text to guide away from (default: the empty prompt)")
    add("-o", "--output_dir", default="./outputs/inference", help="folder the videos are written to")
    add("-B", "--batch-size", type=int, default=1, help="videos per sampling call (one file each)")
    add("-W", "--width", type=int, default=384, help="video width in pixels (a multiple of 8)")
    add("-H", "--height", type=int, default=384, help="video height in pixels (a multiple of 8)")
    add("-T", "--num-frames", type=int, default=16, help="number of frames to generate")
    add("-s", "--num-steps", type=int, default=30, help="DDIM sampling steps")
    add("-g", "--guidance-scale", type=float, default=12, help="classifier-free guidance scale")
    add("-f", "--fps", type=int, default=8, help="frame rate of the written video")
    add("-d", "--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    add("-x", "--xformers", action="store_true", help="use xformers attention (falls back to PyTorch SDPA)")
    add("-S", "--sdp", action="store_true", help="use PyTorch SDPA attention (already the default)")
    add("-lr", "--lora_rank", type=int, default=None,
        help="ignored: the rank is read from the LoRA files (kept so the original commands still run)")
    add("-r", "--seed", type=int, default=None,
        help="random seed; video i of --repeat_num uses seed + i (default: a random seed per video)")
    add("-np", "--noise_prior", type=float, default=0.0,
        help="weight in [0, 1] of the training clip's DDIM-inverted noise in the starting latents "
             "(0 for multi-video models, 0.1-0.5 for single-video ones)")
    add("-rn", "--repeat_num", type=int, default=1, help="how many videos to generate for the prompt")
    add("--overwrite", action="store_true",
        help="replace an existing file of the same name (default: add a suffix _1, _2, ...)")


def settings_from_args(args: argparse.Namespace, write_gif: bool = False) -> GenerationSettings:
    if args.lora_rank is not None:
        logger.info("--lora_rank %d ignored: the rank is read from the LoRA files", args.lora_rank)
    return GenerationSettings(
        prompt=args.prompt or "",  # with --prompts_file, run_generation sets each prompt
        negative_prompt=args.negative_prompt,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        width=args.width,
        height=args.height,
        num_frames=args.num_frames,
        num_steps=args.num_steps,
        guidance_scale=args.guidance_scale,
        fps=args.fps,
        seed=args.seed,
        noise_prior=args.noise_prior,
        repeat_num=args.repeat_num,
        overwrite=args.overwrite,
        write_gif=write_gif,
    )


def prompts_from_args(args: argparse.Namespace) -> list[str]:
    """--prompt, or every prompt of --prompts_file (read now, so a bad file fails before loading)."""
    return [args.prompt] if args.prompt is not None else read_prompts_file(args.prompts_file)


def check_settings(settings: GenerationSettings) -> None:
    """Refuse bad numbers before any model is loaded."""
    if settings.width % VAE_SCALE or settings.height % VAE_SCALE or min(settings.width, settings.height) <= 0:
        raise UserError(f"width and height must be positive multiples of {VAE_SCALE}, "
                        f"got {settings.width}x{settings.height}")
    if not 0.0 <= settings.noise_prior <= 1.0:
        raise UserError(f"--noise_prior must be in [0, 1], got {settings.noise_prior}")
    for flag, value in (("--num-frames", settings.num_frames), ("--num-steps", settings.num_steps),
                        ("--batch-size", settings.batch_size), ("--repeat_num", settings.repeat_num),
                        ("--fps", settings.fps)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")


# ----------------------------------------------------------------------------- model


def device_and_dtype(requested: str | None) -> tuple[str, torch.dtype]:
    """fp16 on CUDA as the original, fp32 elsewhere (CPU half is slow and partly unsupported)."""
    state = process_state()
    if requested is None and state.num_processes > 1:
        device = str(state.device)  # one GPU per process under `accelerate launch`
    else:
        device = resolve_device(requested)
    return device, torch.float16 if device.startswith("cuda") else torch.float32


def prepare_model(model: str, loras: list[LoraRequest], device: str, dtype: torch.dtype,
                  xformers: bool = False) -> Components:
    """Load the pipeline pieces, then the LoRAs at their scales, all active, UNet in eval."""
    components = load_components(model, device, dtype)
    unet = components.unet
    for lora in loras:
        file = load_adapter(unet, lora.folder, lora.adapter_name, scale=lora.scale)
        logger.info("loaded the %s LoRA from %s at scale %g", lora.adapter_name, file, lora.scale)
    if loras:
        activate(unet, adapter_names(unet))
        unet.to(device)  # peft places adapters beside their layers; this only makes sure of it
    if xformers:
        set_attention_backend(unet, xformers=True)
    unet.eval()  # temporal convs use dropout
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


class NoisePrior:
    """The training run's cached clips and their DDIM-inverted latents (SPEC.md §5).

    Which clip a video uses is drawn from its seed. A clip cached without `inversion_noise`
    is inverted once and the result written back into its file for the next run.
    """

    def __init__(self, files: list[Path]):
        self.files = files
        self._entries: dict[Path, dict] = {}

    @classmethod
    def from_folder(cls, folder: str | Path, how_to_fix: str) -> "NoisePrior":
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"--noise_prior > 0 needs the training run's cached_latents/ folder, "
                            f"not found at {folder}; {how_to_fix}")
        try:
            return cls(cached_files(folder))
        except UserError:
            raise UserError(f"no cached_<i>.pt files in {folder} for the noise prior; {how_to_fix}") from None

    def pick(self, seed: int, num_frames: int) -> Path:
        """The seed's draw among the cached clips of `num_frames` frames (a single video's last
        chunk may be shorter than the others: it is never drawn for the full length)."""
        fitting = [f for f in self.files if self.frames(f) == num_frames]
        if not fitting:
            counts = sorted({self.frames(f) for f in self.files})
            raise UserError(f"no cached training clip has {num_frames} frames (they have "
                            f"{', '.join(map(str, counts))}); set --num-frames to one of those or use --noise_prior 0")
        return random.Random(seed).choice(fitting)

    def frames(self, file: Path) -> int:
        return self.entry(file)["latents"].shape[1]

    def entry(self, file: Path) -> dict:
        if file not in self._entries:
            try:
                self._entries[file] = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as err:
                raise UserError(f"cannot read cached latents {file}: {str(err).splitlines()[0]}") from None
            if "latents" not in self._entries[file]:
                raise UserError(f"{file} holds no 'latents': not a cached_latents file of a training run")
        return self._entries[file]

    def inverted(self, file: Path, components: Components) -> torch.Tensor:
        """(4, F, h, w) inverted latents of the clip, computed and stored once when missing."""
        entry = self.entry(file)
        if "inversion_noise" not in entry:
            entry["inversion_noise"] = invert_clip(entry["latents"], components)
            write_back(file, entry)
        return entry["inversion_noise"].float()


def write_back(file: Path, entry: dict) -> None:
    """Store the inversion in the cache file; a temp file + rename never leaves a half-written one."""
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")  # per process: two may write at once
    try:
        torch.save(entry, tmp)
        os.replace(tmp, file)
        logger.info("stored the inversion in %s for later runs", file)
    except OSError as err:  # e.g. read-only downloaded weights: only the reuse is lost
        tmp.unlink(missing_ok=True)
        logger.warning("could not store the inversion in %s (%s); it will be recomputed next time", file, err)


def initial_latents(settings: GenerationSettings, seed: int, inverted: torch.Tensor | None) -> torch.Tensor:
    """(B, 4, F, H/8, W/8) float32 on the CPU: seeded noise, mixed with the prior when p > 0.

    The noise comes from a CPU generator, so a seed gives the same video on every device.
    """
    shape = (settings.batch_size, 4, settings.num_frames,
             settings.height // VAE_SCALE, settings.width // VAE_SCALE)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if settings.noise_prior == 0 or inverted is None:
        return noise
    prior = prepare_prior_latents(inverted.float().cpu(), shape[0], shape[2], shape[3], shape[4])
    return mix_noise_prior(prior, noise, settings.noise_prior)


# ----------------------------------------------------------------------------- sampling and files


def sample_video(components: Components, settings: GenerationSettings, seed: int,
                 inverted: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """One sampling call: (B, F, H, W, 3) uint8 frames for `seed` (and the clip's inverted latents)."""
    latents = initial_latents(settings, seed, inverted).to(components.unet.device)
    cond, uncond = _prompt_embeddings(components, settings)
    latents = denoise(components.unet, components.scheduler, latents, cond, uncond,
                      settings.num_steps, settings.guidance_scale, progress=progress)
    return decode_video(components.vae, latents)


def inverted_for(seed: int, settings: GenerationSettings, prior: NoisePrior | None, components):
    """The inverted latents `seed` starts from (None without a noise prior): its draw among the
    run's cached clips of the requested length."""
    if prior is None or settings.noise_prior <= 0:
        return None
    file = prior.pick(seed, settings.num_frames)
    logger.info("seed %d: noise prior %g from %s", seed, settings.noise_prior, file.name)
    return prior.inverted(file, components)


def _prompt_embeddings(components: Components, settings: GenerationSettings):
    prompts = [settings.prompt, settings.negative_prompt or ""]
    cond, uncond = encode_prompts(components.tokenizer, components.text_encoder, prompts).chunk(2)
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
                        how_to_fix: str) -> NoisePrior | None:
    """The run's cached clips when the noise prior is on, checked before any model is loaded."""
    if settings.noise_prior <= 0:
        return None
    if cache_dir is None:
        raise UserError(f"a noise prior > 0 needs the training run's cached_latents/; {how_to_fix}")
    prior = NoisePrior.from_folder(cache_dir, how_to_fix)
    for seed in seeds:  # a frame-count mismatch fails now, not after loading
        prior.pick(seed, settings.num_frames)
    return prior


def run_generation(model: str, loras: list[LoraRequest], settings: GenerationSettings,
                   cache_dir: Path | None, how_to_fix: str, device: str | None = None,
                   xformers: bool = False, prompts: list[str] | None = None) -> list[Path]:
    """Everything a CLI does: check, load, sample, write. `cache_dir` is the run's cached_latents/.

    `prompts` (default: settings.prompt alone) are each generated with the same seeds.
    """
    check_settings(settings)
    prompts = prompts or [settings.prompt]
    seeds = repeat_seeds(settings.seed, settings.repeat_num)
    jobs = my_jobs(len(prompts), len(seeds))
    if not jobs:  # more processes than videos: nothing for this one to do
        return []
    mine = sorted({i for indices in jobs.values() for i in indices})
    prior = checked_noise_prior(settings, [seeds[i] for i in mine], cache_dir, how_to_fix)
    device, dtype = device_and_dtype(device)
    components = prepare_model(model, loras, device, dtype, xformers)
    written = []
    for p, indices in jobs.items():
        written += generate_videos(components, replace(settings, prompt=prompts[p]), prior, seeds, indices)
    return written
