"""Preview videos during training: `samples/<step>_<prompt>.mp4` with the validation settings."""

import logging
from pathlib import Path

import torch

from models.lora import set_scale
from models.pipeline import decode_video, denoise, encode_prompts
from models.unet import disable_gradient_checkpointing, enable_gradient_checkpointing
from utils.config import validation_prompts
from utils.ddim import mix_noise_prior, prepare_prior_latents
from utils.video_io import write_video

logger = logging.getLogger(__name__)


@torch.no_grad()
def log_validation(cfg, components, adapters, item: dict, samples_dir: Path, step: int, accelerator) -> list[Path]:
    """Sample each validation prompt (or the clip's own) with spatial scale and noise prior from the config."""
    vd = cfg.validation_data
    unet = components.unet
    unet.eval()
    disable_gradient_checkpointing(unet)
    active = list(adapters.spatial[:1]) + ([adapters.temporal] if adapters.temporal else [])
    adapters.use(active=active, trainable=[])
    set_scale(unet, adapters.spatial[0], vd.spatial_scale)
    written = []
    try:
        for prompt in validation_prompts(vd) or [item["prompt"]]:
            latents = _initial_latents(vd, item, accelerator.device)
            cond, uncond = encode_prompts(components.tokenizer, components.text_encoder, [prompt, ""]).chunk(2)
            with accelerator.autocast():
                latents = denoise(unet, components.scheduler, latents, cond, uncond,
                                  vd.num_inference_steps, vd.guidance_scale)
            frames = decode_video(components.vae, latents)[0]
            path = Path(samples_dir) / f"{step}_{prompt.replace('.', '')}.mp4"
            written.append(write_video(path, frames, fps=cfg.train_data.fps))
            logger.info("saved a sample to %s", path)
    finally:
        set_scale(unet, adapters.spatial[0], 1.0)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(unet)
        unet.train()
    return written


def _initial_latents(vd, item: dict, device) -> torch.Tensor:
    shape = (1, 4, vd.num_frames, vd.height // 8, vd.width // 8)
    noise = torch.randn(shape, device=device)
    inverted = item.get("inversion_noise")
    if vd.noise_prior <= 0 or inverted is None:
        return noise
    prior = prepare_prior_latents(inverted.to(device).float(), 1, inverted.shape[1], shape[3], shape[4])
    if prior.shape != noise.shape:  # a clip of another length: the prior decides the frame count
        noise = torch.randn_like(prior)
    return mix_noise_prior(prior, noise, vd.noise_prior)
