"""Loading a text-to-video pipeline folder and the pieces of generation we own.

diffusers' TextToVideoSDPipeline is deprecated, so text encoding, VAE encode/decode and the
DDIM sampling loop with classifier-free guidance live here, built on the diffusers models.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from transformers import CLIPTextModel, CLIPTokenizer

from models.unet import load_unet
from utils.errors import UserError

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Components:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: torch.nn.Module
    scheduler: DDIMScheduler


def check_model_folder(model_path: str) -> None:
    """A local folder must be a diffusers text-to-video pipeline; anything else is taken as a hub id."""
    path = Path(model_path)
    if not path.exists():
        if model_path.startswith((".", "/", "~")) or model_path.count("/") != 1:
            raise UserError(
                f"model folder not found: {model_path} (give a diffusers text-to-video folder such as "
                "./models/zeroscope_v2_576w/, or a hub id like cerspense/zeroscope_v2_576w)"
            )
        return
    missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise UserError(
            f"{model_path} is not a diffusers text-to-video folder: missing {', '.join(m + '/' for m in missing)} "
            "(clone e.g. cerspense/zeroscope_v2_576w, or build the tiny test model with `python -m utils.tiny_model DIR`)"
        )


def load_components(model_path: str, device="cpu", dtype=torch.float32) -> Components:
    """Tokenizer, frozen text encoder, VAE and UNet (single-frame rule applied), DDIM scheduler."""
    check_model_folder(model_path)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(model_path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(model_path, subfolder="text_encoder", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(model_path, subfolder="vae", torch_dtype=dtype)
        unet = load_unet(model_path, dtype=dtype)
        scheduler = DDIMScheduler.from_pretrained(model_path, subfolder="scheduler")
    except OSError as err:
        raise UserError(f"cannot load the model from {model_path}: {str(err).splitlines()[0]}") from None
    for model in (text_encoder, vae, unet):
        model.requires_grad_(False).to(device)
    text_encoder.eval()
    vae.eval()
    return Components(tokenizer, text_encoder, vae, unet, scheduler)


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), 77, D) last hidden states of the frozen CLIP text encoder."""
    ids = tokenize(tokenizer, list(prompts)).to(text_encoder.device)
    return text_encoder(ids)[0]


class PromptCache:
    """Text embeddings computed once per distinct prompt (the text encoder is frozen)."""

    def __init__(self, tokenizer, text_encoder, device=None):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        # Kept on `device` (the training device): a host-to-device copy every step would make
        # CUDA wait for the work already queued.
        self.device = device
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            if p not in self._cache:
                self._cache[p] = encode_prompts(self.tokenizer, self.text_encoder, [p])[0].to(self.device)
        return torch.stack([self._cache[p] for p in prompts])


@torch.no_grad()
def encode_video(vae: AutoencoderKL, pixel_values: torch.Tensor, frames_per_chunk: int = 8) -> torch.Tensor:
    """(B, F, 3, H, W) pixels in [-1, 1] -> (B, 4, F, H/8, W/8) scaled latents (sampled, as the original).

    The encoder sees a few frames at a time (24 frames of 576x320 at once would need several GB of
    activations; the original sliced too); the latents are sampled once over the whole clip, so
    the random draw is the same as in one call.
    """
    batch, frames = pixel_values.shape[:2]
    flat = pixel_values.flatten(0, 1)
    moments = torch.cat([vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist.parameters
                         for chunk in flat.split(frames_per_chunk)])
    latents = DiagonalGaussianDistribution(moments).sample() * vae.config.scaling_factor
    return latents.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def decode_video(vae: AutoencoderKL, latents: torch.Tensor, frames_per_chunk: int = 8) -> torch.Tensor:
    """(B, 4, F, h, w) latents -> (B, F, H, W, 3) uint8 frames, decoded a few frames at a time."""
    batch, _, frames = latents.shape[:3]
    flat = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).flatten(0, 1)
    images = torch.cat([vae.decode(chunk.to(vae.dtype)).sample for chunk in flat.split(frames_per_chunk)])
    images = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return images.unflatten(0, (batch, frames)).permute(0, 1, 3, 4, 2).cpu()


@torch.no_grad()
def denoise(
    unet,
    scheduler: DDIMScheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    num_steps: int = 30,
    guidance_scale: float = 12.0,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM sampling (eta 0) with classifier-free guidance batched into one UNet call per step."""
    from tqdm.auto import tqdm

    scheduler = DDIMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(num_steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    guided = uncond is not None and guidance_scale > 1.0
    context = torch.cat([uncond, cond]) if guided else cond
    context = context.to(latents.device, unet.dtype)
    for t in tqdm(scheduler.timesteps, desc="Sampling", disable=not progress, leave=False):
        model_in = torch.cat([latents] * 2) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)
        pred = unet(model_in.to(unet.dtype), t, encoder_hidden_states=context).sample.float()
        if guided:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        latents = scheduler.step(pred, t, latents).prev_sample
    return latents
