"""One MotionDirector training step: the spatial and the temporal loss, each updating only its own path.

Update order differs from the original on purpose: the original steps the spatial optimiser between
the two backward passes, which breaks autograd in float32 ("modified by an inplace operation").
Here the spatial loss is backpropagated first, the temporal forward runs with the spatial LoRA
frozen (so its gradient cannot reach it), and the caller steps both optimisers afterwards. The
temporal forward sees the pre-update spatial weights, as the original's did; its backward too,
where the original's gradient-checkpointed backward (every shipped config) recomputed the
spatial-LoRA layers with the weights the spatial step had just updated.
"""

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from models.lora import TEMPORAL, activate_fast, set_trainable

SPATIAL_SKIP_PROB = 0.2  # the original skips the spatial loss on 20% of steps
AD_BETA = 1.0  # appearance-debiased loss: beta = 1, alpha = sqrt(beta^2 + 1)


@dataclass
class StepSettings:
    train_spatial: bool = True
    train_temporal: bool = True
    random_hflip_img: float = -1.0
    use_offset_noise: bool = False
    offset_noise_strength: float = 0.1
    loss_scale: float = 1.0  # 1 / gradient_accumulation_steps
    appearance_debias: bool = True  # the temporal loss's appearance-debiased term


@dataclass
class Adapters:
    """The adapters on the UNet, their parameters and the LoRA layers (cached: looked up every step)."""

    spatial: list[str]
    params: dict[str, list[torch.nn.Parameter]]
    layers: list = field(default_factory=list)
    temporal: str | None = TEMPORAL

    def use(self, active: list[str], trainable: list[str]) -> None:
        """Switch adapters twice per step: cheap, and trainability is ours to set."""
        activate_fast(self.layers, active)
        set_trainable(self.params, trainable)


@dataclass
class StepLosses:
    spatial: float | None
    temporal: float | None


def sample_noise(latents: torch.Tensor, offset: bool, strength: float) -> torch.Tensor:
    """Gaussian noise, plus per-(video, channel, frame) offset noise when enabled."""
    noise = torch.randn_like(latents)
    if offset:
        b, c, f = latents.shape[:3]
        noise = noise + strength * torch.randn(b, c, f, 1, 1, device=latents.device, dtype=latents.dtype)
    return noise


def appearance_debiased_loss(pred: torch.Tensor, target: torch.Tensor, anchor: int) -> torch.Tensor:
    """MSE between alpha*x - beta*x[anchor frame] for prediction and target (paper, eq. 5)."""
    alpha = (AD_BETA**2 + 1) ** 0.5
    pred_d = alpha * pred - AD_BETA * pred[:, :, anchor : anchor + 1]
    target_d = alpha * target - AD_BETA * target[:, :, anchor : anchor + 1]
    return F.mse_loss(pred_d.float(), target_d.float())


def temporal_loss(pred: torch.Tensor, target: torch.Tensor, anchor: int, debias: bool = True) -> torch.Tensor:
    loss = F.mse_loss(pred.float(), target.float())
    return loss + appearance_debiased_loss(pred, target, anchor) if debias else loss


def train_step(
    components,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    adapters: Adapters,
    spatial_adapter: str | None,
    settings: StepSettings,
    backward,
    autocast,
    pixel_values: torch.Tensor | None = None,
    frame_latents: torch.Tensor | None = None,
) -> StepLosses:
    """Forward and backward of both losses for one batch; optimiser steps are the caller's.

    `components` gives the base, its denoiser and the training scheduler. `backward(loss)` runs
    the backward pass (accelerate / grad-scaler aware), `autocast()` is the mixed-precision
    context. `pixel_values` are needed only for horizontal flips; `frame_latents` (B, C, F, h, w)
    are the clip's frames encoded one by one, for bases whose clip latents mix frames.
    """
    base, scheduler = components.base, components.scheduler
    skip_spatial = settings.train_temporal and random.uniform(0, 1) < SPATIAL_SKIP_PROB
    skip_spatial = skip_spatial or not settings.train_spatial
    noise = sample_noise(latents, settings.use_offset_noise, settings.offset_noise_strength)
    timesteps = base.draw_timesteps(scheduler, latents.shape[0], latents.device)
    noisy = base.add_noise(scheduler, latents, noise, timesteps)
    target = base.target(scheduler, latents, noise, timesteps)

    loss_spatial = None
    if not skip_spatial:
        adapters.use(active=[spatial_adapter], trainable=[spatial_adapter])
        frame_in, frame_target = spatial_sample(components, noisy, target, timesteps, settings, pixel_values,
                                                frame_latents)
        with autocast():
            pred = components.predict(frame_in, timesteps, text_embeddings)
        loss_spatial = F.mse_loss(pred[:, :, 0].float(), frame_target.float())
        backward(loss_spatial * settings.loss_scale)

    loss_temporal = None
    if settings.train_temporal:
        active = [adapters.temporal] + ([] if skip_spatial else [spatial_adapter])
        adapters.use(active=active, trainable=[adapters.temporal])
        with autocast():
            pred = components.predict(noisy, timesteps, text_embeddings)
        anchor = torch.randint(0, pred.shape[2], (1,)).item()
        loss_temporal = temporal_loss(pred, target, anchor, settings.appearance_debias)
        backward(loss_temporal * settings.loss_scale)

    return StepLosses(
        spatial=None if loss_spatial is None else loss_spatial.item(),
        temporal=None if loss_temporal is None else loss_temporal.item(),
    )


def spatial_sample(components, noisy, target, timesteps, settings, pixel_values, frame_latents=None):
    """One random frame as a one-frame clip, or (with prob. random_hflip_img) that frame flipped.

    For a base whose clip latents are per-frame, the frame is sliced from the noised clip (the
    original's sample); otherwise its image latent (`frame_latents`) is noised with fresh noise
    at the same timestep. A flipped frame is re-encoded and re-noised the same way. Unlike the
    original, the flipped target follows the base's target (the original always used the noise).
    """
    base, scheduler = components.base, components.scheduler
    frames = noisy.shape[2] if base.frames_are_images else frame_latents.shape[2]
    frame = torch.randint(0, frames, (1,)).item()
    flip = random.uniform(0, 1) < settings.random_hflip_img
    if flip and pixel_values is not None:
        clean = components.encode_frames(pixel_values[:, frame : frame + 1].flip(-1)).to(noisy.dtype)
    elif base.frames_are_images:
        return noisy[:, :, frame : frame + 1], target[:, :, frame]
    else:
        clean = frame_latents[:, :, frame : frame + 1].to(noisy.dtype)
    noise = sample_noise(clean, settings.use_offset_noise, settings.offset_noise_strength)
    frame_in = base.add_noise(scheduler, clean, noise, timesteps)
    return frame_in, base.target(scheduler, clean, noise, timesteps)[:, :, 0]
