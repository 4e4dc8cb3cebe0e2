"""What the UNet bases (ZeroScope/ModelScope, AnimateDiff) share: a CLIP text encoder, an image
AutoencoderKL run frame by frame, DDPM noise with an epsilon or v target, DDIM sampling and the
original MotionDirector's DDIM inversion.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from models.bases import tiny_parts
from models.bases.spec import Components, VideoBase
from models.fast_layers import LeanSdpaProcessor

FRAMES_PER_VAE_CHUNK = 8


def sd_vae_config(sample_size: int) -> dict:
    """The Stable Diffusion VAE (AutoencoderKL, 4 latent channels, scale 8, scaling factor 0.18215)
    that ZeroScope / ModelScope and SD 1.5 ship; `sample_size` is the release's own frame size."""
    return dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, norm_num_groups=32, latent_channels=4, sample_size=sample_size, scaling_factor=0.18215,
    )


class UNetBase(VideoBase):
    """A latent-diffusion UNet with CLIP text, a per-frame VAE and a DDPM/DDIM scheduler."""

    frames_are_images = True

    # ------------------------------------------------------------------ text

    def tokenize(self, components: Components, prompts: list[str]) -> torch.Tensor:
        return clip_token_ids(components.tokenizer, prompts)

    def encode_prompts(self, components: Components, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), 77, D) last hidden states of the frozen CLIP text encoder."""
        return clip_text_states(components.tokenizer, components.text_encoder, prompts)

    # ------------------------------------------------------------------ VAE, frame by frame

    @torch.no_grad()
    def encode_video(self, components: Components, pixels: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> (B, 4, F, H/8, W/8) scaled latents, sampled as the original.

        The encoder sees a few frames at a time (24 frames of 576x320 at once would need several
        GB of activations; the original sliced too); the latents are sampled once over the whole
        clip, so the random draw is the same as in one call.
        """
        vae = components.vae
        batch, frames = pixels.shape[:2]
        flat = pixels.flatten(0, 1)
        moments = torch.cat([vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist.parameters
                             for chunk in flat.split(FRAMES_PER_VAE_CHUNK)])
        latents = DiagonalGaussianDistribution(moments).sample() * vae.config.scaling_factor
        return latents.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def decode_video(self, components: Components, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, F, h, w) latents -> (B, F, H, W, 3) uint8 frames, decoded a few frames at a time."""
        vae = components.vae
        batch, _, frames = latents.shape[:3]
        flat = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).flatten(0, 1)
        images = torch.cat([vae.decode(chunk.to(vae.device, vae.dtype)).sample
                            for chunk in flat.split(FRAMES_PER_VAE_CHUNK)])
        images = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.unflatten(0, (batch, frames)).permute(0, 1, 3, 4, 2).cpu()

    # ------------------------------------------------------------------ random models for the benchmarks

    def build_vae(self, config) -> torch.nn.Module:
        return AutoencoderKL(**config)

    def build_text_encoder(self, config) -> torch.nn.Module:
        return CLIPTextModel(CLIPTextConfig(**config))

    def random_components(self, arch: str, device, dtype: torch.dtype) -> Components:
        """`arch` with random weights (nothing downloaded); the tiny byte-level CLIP tokenizer's ids
        fit the real embedding table."""
        with tempfile.TemporaryDirectory(prefix="md_tokenizer_") as tmp:
            tiny_parts.write_clip_tokenizer(Path(tmp))
            tokenizer = CLIPTokenizer.from_pretrained(tmp)
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        sizes = self.architecture(arch)
        with torch.device(device):  # initialise on the GPU directly: minutes faster for 1.4B parameters
            unet = self.build_denoiser(sizes["denoiser"])
            vae = self.build_vae(sizes["vae"])
            text_encoder = self.build_text_encoder({**sizes["text_encoder"], **ids})
        for model in (unet, vae, text_encoder):
            model.requires_grad_(False).to(dtype)
        vae.eval()
        text_encoder.eval()
        return Components(self, tokenizer, text_encoder, vae, unet, self.default_scheduler())

    # ------------------------------------------------------------------ attention

    def set_attention_backend(self, denoiser: torch.nn.Module, xformers: bool = False) -> str:
        """xformers when asked and importable, else PyTorch SDPA (the diffusers default, leaner)."""
        if xformers:
            try:
                denoiser.enable_xformers_memory_efficient_attention()
                return "xformers"
            except Exception as err:  # xformers missing or no CUDA: SDPA is as fast on torch 2
                import logging

                logging.getLogger(__name__).warning("xformers unavailable (%s); using PyTorch SDPA attention", err)
        denoiser.set_attn_processor(LeanSdpaProcessor())
        return "sdpa"

    # ------------------------------------------------------------------ DDPM noise, DDIM sampling

    def training_scheduler(self, scheduler, rescale_schedule: bool = False):
        """The folder's scheduler, or with `rescale_schedule` its zero-terminal-SNR variant (Lin et
        al. 2023). The rescale lives in the config (diffusers' `rescale_betas_zero_snr`), so every
        scheduler built from it (inversion, validation sampling) follows the training noise."""
        if not rescale_schedule:
            return scheduler
        return DDIMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=True)

    def draw_timesteps(self, scheduler, batch: int, device) -> torch.Tensor:
        return torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)

    def add_noise(self, scheduler, latents, noise, timesteps):
        return scheduler.add_noise(latents, noise, timesteps)

    def target(self, scheduler, latents, noise, timesteps):
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return scheduler.get_velocity(latents, noise, timesteps)
        raise ValueError(f"unsupported prediction_type {kind!r} in the scheduler config")

    def sampling_scheduler(self, scheduler, num_steps: int, device):
        """DDIM (eta 0) from the folder's scheduler config, as the original sampled."""
        fresh = DDIMScheduler.from_config(scheduler.config)
        fresh.set_timesteps(num_steps, device=device)
        return fresh

    @torch.no_grad()
    def invert(self, components: Components, latents: torch.Tensor, text: torch.Tensor, num_steps: int,
               progress: bool = False) -> torch.Tensor:
        """DDIM-invert (B, C, F, h, w) latents with text states `text` (B or 1 rows); the most noisy latent.

        The denoiser should be in eval mode (temporal convs use dropout). The running latent stays
        float32 under a half-precision denoiser or autocast: 50 steps of fp16 rounding would pile
        up in it; only the denoiser's input takes its dtype.
        """
        if latents.dim() != 5:
            raise ValueError(f"latents must be (B, C, F, H, W), got shape {tuple(latents.shape)}")
        scheduler = DDIMScheduler.from_config(components.scheduler.config)
        scheduler.set_timesteps(num_steps)
        timesteps = scheduler.timesteps
        denoiser = components.denoiser
        text = text.expand(latents.shape[0], -1, -1) if text.shape[0] != latents.shape[0] else text
        latent = latents.float().clone()
        dtype = getattr(denoiser, "dtype", torch.float32)
        for i in tqdm(range(num_steps), desc="DDIM inversion", disable=not progress):
            t = timesteps[len(timesteps) - i - 1]
            output = self.predict(denoiser, latent.to(dtype), t, text.to(dtype)).float()
            latent = ddim_inversion_step(as_noise(output, t, latent, scheduler), t, latent, scheduler)
        return latent


def clip_token_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), 77) token ids, padded to the tokenizer's length as the original."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def clip_text_states(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), 77, D) last hidden states of a frozen CLIP text encoder."""
    return text_encoder(clip_token_ids(tokenizer, prompts).to(text_encoder.device))[0]


def ddim_inversion_step(eps: torch.Tensor, t: torch.Tensor, sample: torch.Tensor, scheduler: DDIMScheduler):
    """One DDIM step upward, from the level below `t` to `t` itself.

    Pairing as in the original `next_step`: the UNet is evaluated at `t`, the current sample is
    taken to sit at t_prev = t - T // num_steps (clamped to 999; a negative t_prev means the
    clean end, `final_alpha_cumprod`), and the result sits at `t`. The arithmetic is kept in the
    original's order and in float32 0-dim tensors so the result matches it to rounding.
    """
    t_prev = min(t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps, 999)
    alpha_prod = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    alpha_prod_next = scheduler.alphas_cumprod[t]
    pred_original = (sample - (1 - alpha_prod) ** 0.5 * eps) / alpha_prod**0.5
    return alpha_prod_next**0.5 * pred_original + (1 - alpha_prod_next) ** 0.5 * eps


def as_noise(output: torch.Tensor, t, sample: torch.Tensor, scheduler: DDIMScheduler) -> torch.Tensor:
    """The UNet's output as a noise prediction: v-prediction models (eps = sqrt(a) v + sqrt(1-a) x_t,
    a = alpha_bar at the timestep the UNet was given) are converted; epsilon models pass through."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return output
    if kind != "v_prediction":
        raise ValueError(f"DDIM inversion supports epsilon and v_prediction models, not {kind!r}")
    alpha_prod = scheduler.alphas_cumprod[int(t)]
    return alpha_prod**0.5 * output + (1 - alpha_prod) ** 0.5 * sample


def layers_inside(model: torch.nn.Module, parent_class: type, keys: tuple[str, ...],
                  layer_type: type = torch.nn.Linear) -> list[str]:
    """Full names of the base layers of `layer_type` (linears by default) inside every
    `parent_class` module whose name (inside the parent) contains one of `keys`, in registration
    order; after injection, the LoRA wrappers."""
    from peft.tuners.lora import LoraLayer

    names = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, parent_class):
            continue
        for child_name, child in parent.named_modules():
            is_layer = isinstance(child, LoraLayer) or (
                isinstance(child, layer_type) and "lora_" not in child_name and "base_layer" not in child_name)
            if is_layer and any(k in child_name for k in keys):
                names.append(f"{parent_name}.{child_name}")
    return names
