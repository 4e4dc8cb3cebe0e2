"""Preview videos during training: `samples/<step>_<prompt>.mp4` with the validation settings."""

import logging
from pathlib import Path

import torch

from models.checkpointing import checkpointing_paused
from models.lora import set_scale
from utils.training.config import validation_prompts
from utils.inference.generate import GenerationSettings, sample_video
from utils.io.video_io import write_video

logger = logging.getLogger(__name__)


@torch.no_grad()
def log_validation(cfg, components, adapters, item: dict, samples_dir: Path, step: int, accelerator) -> list[Path]:
    """Sample each validation prompt (or the clip's own) with spatial scale and noise prior from the config.

    As in the original, the noise prior comes from the clip of the last training step, and it
    fixes the sample's frames and size: the original sampled from the cached clip's inverted
    latents as they are (validation_data's num_frames, width and height then go unused).
    """
    vd = cfg.validation_data
    denoiser = components.denoiser
    # As the original: every spatial LoRA (one per clip) at spatial_scale, and the temporal LoRA.
    spatial = list(adapters.spatial) if vd.spatial_scale != 0 else []
    adapters.use(active=spatial + ([adapters.temporal] if adapters.temporal else []), trainable=[])
    inverted = item.get("inversion_noise") if vd.noise_prior > 0 else None
    frames, height, width = sample_size(components.base, vd, inverted)
    written = []
    denoiser.eval()
    try:
        with checkpointing_paused(denoiser):
            for name in spatial:
                set_scale(denoiser, name, vd.spatial_scale)
            for prompt in validation_prompts(vd) or [item["prompt"]]:
                settings = GenerationSettings(prompt, width=width, height=height, num_frames=frames,
                                              num_steps=vd.num_inference_steps, guidance_scale=vd.guidance_scale,
                                              noise_prior=vd.noise_prior)
                seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # from the run's seeded RNG
                with accelerator.autocast():
                    video = sample_video(components, settings, seed, inverted)[0]
                path = Path(samples_dir) / f"{step}_{prompt.replace('.', '')}.mp4"
                written.append(write_video(path, video, fps=cfg.train_data.fps))
                logger.info("saved a sample to %s", path)
    finally:
        for name in spatial:
            set_scale(denoiser, name, 1.0)
        denoiser.train()
    return written


def sample_size(base, vd, inverted) -> tuple[int, int, int]:
    """(frames, height, width) of a validation sample: the cached clip's under a noise prior."""
    if inverted is None:
        return vd.num_frames, vd.height, vd.width
    latent_frames, latent_height, latent_width = inverted.shape[-3:]
    return base.pixel_frames(latent_frames), latent_height * base.vae_scale, latent_width * base.vae_scale
