"""What a base model states: everything base-specific that the trainer, the step, inference,
the noise prior, the tools and the benchmarks ask of it.

A base is one subclass of `VideoBase` in its own module, registered in `models.bases`. The rest
of the project holds no base facts: it asks `components.base` (or `base_for_model(path)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError

SPATIAL = "spatial"
TEMPORAL = "temporal"


@dataclass
class Components:
    """A loaded base: its frozen models and scheduler, and the base that knows how to use them."""

    base: "VideoBase"
    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    denoiser: torch.nn.Module  # UNet3D, UNetMotionModel or a DiT: the model that gets the LoRAs
    scheduler: Any
    extras: dict = field(default_factory=dict)  # what a base needs beside these

    # The base's operations on these components, for short call sites.
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.base.encode_prompts(self, list(prompts))

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.base.tokenize(self, list(prompts))

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.base.encode_video(self, pixels)

    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.base.encode_frames(self, pixels)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        return self.base.decode_video(self, latents)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.base.predict(self.denoiser, noisy, timesteps, text)

    def lora_targets(self, path: str, file=None) -> list[str]:
        """The linears LoRA path `path` adapts; for loading a saved adapter `file`, the ones it holds."""
        if file is not None:
            return self.base.lora_targets_of_file(self.denoiser, path, file)
        return self.base.lora_targets(self.denoiser, path)


@dataclass(frozen=True)
class ExportFile:
    """A file a base writes beside the native temporal adapter, for a stock tool to load."""

    name: str  # file name inside temporal/export/
    tool: str  # what loads it, for the model card
    how_to_load: str  # markdown for the model card ({model} is the base model's id or folder)


class VideoBase:
    """Base-specific facts and operations. Subclasses set the attributes and override the methods."""

    name = ""  # registry key, e.g. "zeroscope"
    label = ""  # for messages and model cards, e.g. "ZeroScope / ModelScope (UNet3DConditionModel)"
    pipeline_classes: tuple[str, ...] = ()  # model_index.json `_class_name`s this base loads
    latent_channels = 4
    vae_scale = 8  # pixels per latent, each spatial axis
    size_multiple = 8  # width and height must be multiples of this
    default_fps = 8
    hub_tags: tuple[str, ...] = ()  # model-card tags
    export_files: tuple[ExportFile, ...] = ()
    # True when frame i of a clip's latents is the latent of frame i alone (a per-frame VAE); the
    # spatial path then slices the clip's latents. False (a VAE that mixes frames): the spatial
    # path uses per-frame image latents cached beside the clip's.
    frames_are_images = True
    # True: `load_components` leaves the text encoder on the CPU (in its dtype) and the base moves
    # it to the GPU only while it encodes (Wan's 11 GB UMT5); the trainer does not move it either.
    text_encoder_on_cpu = False
    # The VAE's dtype; None: the frozen weights' (training precision). The memory predictor reads it.
    vae_dtype: torch.dtype | None = None

    # ------------------------------------------------------------------ sizes

    def check_size(self, width: int, height: int, what: str) -> None:
        """Raise a one-line UserError for a frame size the base cannot take."""
        m = self.size_multiple
        if width <= 0 or height <= 0 or width % m or height % m:
            raise UserError(f"{what} must be positive multiples of {m} for {self.label}, got {width}x{height}; "
                            f"nearest valid: {_nearest(width, m)}x{_nearest(height, m)}")

    def check_frames(self, frames: int, what: str) -> None:
        """Raise a one-line UserError for a frame count the base cannot take."""
        if frames < 1:
            raise UserError(f"{what} must be at least 1, got {frames}")

    def latent_frames(self, frames: int) -> int:
        return frames

    def pixel_frames(self, latent_frames: int) -> int:
        return latent_frames

    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, ...]:
        return (batch, self.latent_channels, self.latent_frames(frames), height // self.vae_scale,
                width // self.vae_scale)

    # ------------------------------------------------------------------ loading

    def for_folder(self, model_path: str) -> "VideoBase":
        """This base as the folder (or hub id) `model_path` sets it up: a base whose sizes depend on
        the folder's configs returns a copy that holds them; the others return themselves."""
        return self

    def check_folder(self, path: Path) -> None:
        """A local model folder must hold what `load` reads (raise UserError otherwise)."""

    accepted_options: tuple[str, ...] = ()  # the base-specific config keys this base reads

    def check_options(self, model_index: dict, options: dict) -> None:
        """The config's base options (e.g. a motion adapter) must suit this model (UserError otherwise);
        a key another base reads is refused rather than silently ignored."""
        for key, value in options.items():
            if value and key not in self.accepted_options:
                raise UserError(f"{key} does not apply to {self.label}; remove the key (or set it to null)")

    def load(self, model_path: str, device, dtype: torch.dtype, options: dict | None = None) -> Components:
        raise NotImplementedError

    # ------------------------------------------------------------------ text

    def tokenize(self, components: Components, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode_prompts(self, components: Components, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), L, D) text states of the frozen text encoder, on the encoder's device."""
        raise NotImplementedError

    # ------------------------------------------------------------------ VAE

    def encode_video(self, components: Components, pixels: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) pixels in [-1, 1] -> (B, C, f, h, w) latents, scaled as the denoiser takes them."""
        raise NotImplementedError

    def encode_frames(self, components: Components, pixels: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) -> (B, C, F, h, w): each frame encoded alone, as an image."""
        return self.encode_video(components, pixels)

    def decode_video(self, components: Components, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, f, h, w) latents -> (B, F, H, W, 3) uint8 frames on the CPU."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the denoiser

    def prepare_denoiser(self, denoiser: torch.nn.Module) -> torch.nn.Module:
        """The stock denoiser as we run it (the single-frame rule, lean layers); in place."""
        return denoiser

    def predict(self, denoiser, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The denoiser's output for (B, C, f, h, w) latents, in the latents' layout."""
        raise NotImplementedError

    def lora_targets(self, denoiser: torch.nn.Module, path: str) -> list[str]:
        """Full names of the linears a LoRA path adapts, in registration order."""
        raise NotImplementedError

    def lora_targets_of_file(self, denoiser: torch.nn.Module, path: str, file: Path) -> list[str]:
        """The linears to give a saved adapter of `path` (a base whose layers are configurable
        reads them from the file); by default the path's fixed targets."""
        return self.lora_targets(denoiser, path)

    def checkpoint_targets(self, denoiser: torch.nn.Module, granularity: str) -> list[torch.nn.Module]:
        """The modules whose forward is recomputed in the backward pass at `granularity`."""
        raise NotImplementedError

    checkpoint_granularities: tuple[str, ...] = ("block",)
    default_granularity = "block"

    def check_granularity(self, granularity: str) -> None:
        if granularity not in self.checkpoint_granularities:
            raise ValueError(f"gradient checkpointing granularity must be one of {self.checkpoint_granularities} "
                             f"for {self.label}, got {granularity!r}")

    def set_attention_backend(self, denoiser: torch.nn.Module, xformers: bool = False) -> str:
        return "default"

    # ------------------------------------------------------------------ diffusion

    def default_scheduler(self):
        """A scheduler of the base's usual config (for benchmarks on random weights)."""
        raise NotImplementedError

    def training_scheduler(self, scheduler, rescale_schedule: bool = False):
        """The scheduler training noises with (the folder's, or a variant the config asks for)."""
        return scheduler

    def draw_timesteps(self, scheduler, batch: int, device) -> torch.Tensor:
        raise NotImplementedError

    def add_noise(self, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target(self, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sampling_scheduler(self, scheduler, num_steps: int, device):
        """A fresh scheduler with `num_steps` timesteps set, for one sampling run."""
        raise NotImplementedError

    def invert(self, components: Components, latents: torch.Tensor, text: torch.Tensor, num_steps: int,
               progress: bool = False) -> torch.Tensor:
        """The inversion of clean (B, C, f, h, w) latents to the noise end, with text states `text`."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, components: Components, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
               num_steps: int, guidance_scale: float, progress: bool = False) -> torch.Tensor:
        """Sampling with classifier-free guidance batched into one denoiser call per step."""
        from tqdm.auto import tqdm

        scheduler = self.sampling_scheduler(components.scheduler, num_steps, latents.device)
        latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)  # flow schedulers start at unit noise
        scale_input = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
        denoiser = components.denoiser
        guided = uncond is not None and guidance_scale > 1.0
        text = (torch.cat([uncond, cond]) if guided else cond).to(latents.device, denoiser.dtype)
        for t in tqdm(scheduler.timesteps, desc="Sampling", disable=not progress, leave=False):
            model_in = torch.cat([latents] * 2) if guided else latents
            model_in = scale_input(model_in, t)
            pred = self.predict(denoiser, model_in.to(denoiser.dtype), t, text).float()
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
        return latents

    inversion_steps = 50
    default_sampling = dict(width=384, height=384, num_frames=16, num_steps=30, guidance_scale=12.0)
    cuda_dtype = torch.float16  # the weights' dtype for inference on a GPU
    single_video_config = "config_single_video.yaml"  # the shipped configs/ file a one-clip run starts from

    def folder_sampling(self, model_path: str) -> dict:
        """`default_sampling` for one model folder (a base's tiny test model has its own small size)."""
        return dict(self.default_sampling)

    # ------------------------------------------------------------------ tools

    def build_tiny(self, out_dir: Path, seed: int = 0) -> Path:
        """Write a tiny random pipeline folder of this base (stock diffusers classes) for tests."""
        raise NotImplementedError

    def export(self, state: dict[str, torch.Tensor], path: str, folder: Path) -> list[Path]:
        """Write the adapter `state` (peft keys) of LoRA path `path` in the base's stock formats."""
        return []

    # ------------------------------------------------------------------ sizes for the benchmarks

    archs: tuple[str, ...] = ()  # full-size architectures the benchmarks build with random weights

    def architecture(self, arch: str) -> dict:
        """{"denoiser": config, "vae": config, "text": (tokens, width)} of a full-size `arch`, or
        of "tiny" (the test model); optionally "text_encoder": config for `build_text_encoder`."""
        raise NotImplementedError

    def folder_architecture(self, model_path: str) -> dict:
        """`architecture` read from a pipeline folder's configs."""
        raise NotImplementedError

    def build_denoiser(self, config) -> torch.nn.Module:
        """A random denoiser of `config` (in the current default device), prepared as we run it."""
        raise NotImplementedError

    def build_vae(self, config) -> torch.nn.Module:
        raise NotImplementedError

    def build_text_encoder(self, config) -> torch.nn.Module:
        """A random text encoder of `config` (`architecture(...)["text_encoder"]`, optional: the
        memory predictor counts it while latents are cached when a base builds one)."""
        raise NotImplementedError

    def random_components(self, arch: str, device, dtype: torch.dtype) -> Components:
        """A full-size pipeline with random weights (nothing downloaded), frozen, for benchmarks."""
        raise NotImplementedError


def _nearest(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)
