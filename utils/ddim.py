"""DDIM inversion of a clip's latents and the inversion noise prior (SPEC.md §5).

At inference MotionDirector can start sampling from a mix of the inverted
training clip and fresh noise: sqrt(p) * inverted + sqrt(1 - p) * noise.
The inversion walks the DDIM timesteps upward with the empty prompt, with the
same timestep/alpha pairing as the original code, so cached `inversion_noise`
tensors of original runs and ours agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from utils.errors import UserError


def _inversion_step(
    eps: torch.Tensor, t: torch.Tensor, sample: torch.Tensor, scheduler: DDIMScheduler
) -> torch.Tensor:
    """One DDIM step upward, from the level below `t` to `t` itself.

    Pairing as in the original `next_step`: the UNet is evaluated at `t`, the
    current sample is taken to sit at t_prev = t - T // num_steps (clamped to 999;
    a negative t_prev means the clean end, `final_alpha_cumprod`), and the result
    sits at `t`. The arithmetic is kept in the original's order and in float32
    0-dim tensors so the result matches it to rounding.
    """
    t_prev = min(t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps, 999)
    alpha_prod = scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    alpha_prod_next = scheduler.alphas_cumprod[t]
    pred_original = (sample - (1 - alpha_prod) ** 0.5 * eps) / alpha_prod**0.5
    return alpha_prod_next**0.5 * pred_original + (1 - alpha_prod_next) ** 0.5 * eps


@torch.no_grad()
def ddim_inversion(
    unet: torch.nn.Module,
    scheduler,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    num_steps: int = 50,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM-invert `latents` (B, C, F, H, W) and return the final (most noisy) latent.

    `text_embeddings` (B or 1, 77, D) are the text encoder's hidden states of the
    empty prompt. `scheduler` is any diffusers scheduler of the model; a fresh
    DDIMScheduler is built from its config, so the caller's one is not touched.
    The UNet should be in eval mode (its temporal convs use dropout).
    """
    if latents.dim() != 5:
        raise ValueError(f"latents must be (B, C, F, H, W), got shape {tuple(latents.shape)}")
    inv_scheduler = DDIMScheduler.from_config(scheduler.config)
    inv_scheduler.set_timesteps(num_steps)
    timesteps = inv_scheduler.timesteps
    if text_embeddings.shape[0] != latents.shape[0]:
        text_embeddings = text_embeddings.expand(latents.shape[0], -1, -1)

    # The running latent stays float32 under a half-precision UNet or autocast: 50 steps of
    # fp16 rounding would pile up in it. Only the UNet's input takes the UNet's dtype.
    latent = latents.float().clone()
    dtype = getattr(unet, "dtype", torch.float32)
    for i in tqdm(range(num_steps), desc="DDIM inversion", disable=not progress):
        t = timesteps[len(timesteps) - i - 1]
        output = unet(latent.to(dtype), t, encoder_hidden_states=text_embeddings).sample.float()
        latent = _inversion_step(_as_noise(output, t, latent, inv_scheduler), t, latent, inv_scheduler)
    return latent


def _as_noise(output: torch.Tensor, t, sample: torch.Tensor, scheduler: DDIMScheduler) -> torch.Tensor:
    """The UNet's output as a noise prediction: v-prediction models (eps = sqrt(a) v + sqrt(1-a) x_t,
    a = alpha_bar at the timestep the UNet was given) are converted; epsilon models pass through."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return output
    if kind != "v_prediction":
        raise ValueError(f"DDIM inversion supports epsilon and v_prediction models, not {kind!r}")
    alpha_prod = scheduler.alphas_cumprod[int(t)]
    return alpha_prod**0.5 * output + (1 - alpha_prod) ** 0.5 * sample


def mix_noise_prior(inverted: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    """Initial latents sqrt(p) * inverted + sqrt(1 - p) * noise; p = 0 is plain noise."""
    if not 0.0 <= p <= 1.0:
        raise UserError(f"noise prior must be in [0, 1], got {p}")
    if inverted.shape != noise.shape:
        raise ValueError(f"inverted {tuple(inverted.shape)} and noise {tuple(noise.shape)} differ in shape")
    return p**0.5 * inverted + (1 - p) ** 0.5 * noise


def prepare_prior_latents(
    inverted: torch.Tensor, batch_size: int, num_frames: int, height_latent: int, width_latent: int
) -> torch.Tensor:
    """Fit one inverted clip, (C, F, h, w) or (1, C, F, h, w), to (batch_size, C, F, H, W).

    Each frame is resized bilinearly when (h, w) differs from the requested
    latent size, then the clip is repeated over the batch. The frame count must
    match: the original silently kept the cached clip's frame count and ignored
    the requested one; we refuse instead.
    """
    if inverted.dim() == 5:
        if inverted.shape[0] != 1:
            raise ValueError(f"expected one inverted clip, got a batch of {inverted.shape[0]}")
        inverted = inverted[0]
    if inverted.dim() != 4:
        raise ValueError(f"inverted latents must be (C, F, h, w) or (1, C, F, h, w), got {tuple(inverted.shape)}")
    channels, frames, height, width = inverted.shape
    if frames != num_frames:
        raise UserError(
            f"the cached inversion noise has {frames} frames but {num_frames} were requested; "
            f"generate {frames} frames or set the noise prior to 0"
        )
    if (height, width) != (height_latent, width_latent):
        per_frame = inverted.permute(1, 0, 2, 3)  # (F, C, h, w): resize each frame as an image
        per_frame = F.interpolate(per_frame, size=(height_latent, width_latent), mode="bilinear")
        inverted = per_frame.permute(1, 0, 2, 3)
    return inverted.unsqueeze(0).repeat(batch_size, 1, 1, 1, 1).contiguous()
