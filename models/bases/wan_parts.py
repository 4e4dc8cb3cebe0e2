"""Wan 2.1's pieces as WanBase uses them: full-size configs, the flow scheduler and its sigma
schedule, UMT5 prompt states as WanPipeline makes them, the VAE's latent normalisation.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from utils.errors import UserError

# Wan2.1-T2V-1.3B-Diffusers transformer/config.json (notes: wan_facts.md §5); 1,418,996,800 parameters.
FULL_SIZE_TRANSFORMERS = {
    "wan2.1-1.3b": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                        out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
    # The 14B model is WanTransformer3DModel's default config.
    "wan2.1-14b": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                       out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                       cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
}
# Both sizes share the VAE: AutoencoderKLWan's default config (base_dim 96, z_dim 16).

# The scheduler diffusers gives Wan 2.1 T2V by default (its Wan docs: UniPC, flow_prediction,
# use_flow_sigmas, flow_shift 3.0, the shift for 480p).
SCHEDULER_CONFIG = {
    "_class_name": "UniPCMultistepScheduler",
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "solver_order": 2,
    "final_sigmas_type": "zero",
}


# ----------------------------------------------------------------------------- flow matching


def load_flow_scheduler(model_path: str):
    """The folder's (or hub id's) scheduler, which must be a flow-matching one."""
    return flow_scheduler_of(dict(UniPCMultistepScheduler.load_config(model_path, subfolder="scheduler")))


def flow_scheduler_of(config: dict):
    """UniPC with flow sigmas (Wan's default) or FlowMatchEuler, from a scheduler config."""
    kind = config.get("_class_name")
    if config.get("use_dynamic_shifting"):
        raise UserError(f"the model's {kind} uses resolution-dependent (dynamic) shifting, which Wan 2.1 does not; "
                        "give its scheduler a fixed shift")
    if kind == "UniPCMultistepScheduler" and config.get("use_flow_sigmas") \
            and config.get("prediction_type") == "flow_prediction":
        return UniPCMultistepScheduler.from_config(config)
    if kind == "FlowMatchEulerDiscreteScheduler":
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    raise UserError(f"the model's scheduler is {kind}, not a flow-matching one; Wan needs "
                    "UniPCMultistepScheduler(prediction_type='flow_prediction', use_flow_sigmas=True) or "
                    "FlowMatchEulerDiscreteScheduler")


def flow_shift(scheduler) -> float:
    """The schedule's shift: UniPC's `flow_shift`, FlowMatchEuler's `shift`."""
    config = scheduler.config
    return float(config.flow_shift if "flow_shift" in config else config.shift)


def shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow schedulers' shift of a uniform sigma: shift*u / (1 + (shift - 1)*u)."""
    return shift * u / (1 + (shift - 1) * u)


def sigma_of(timesteps: torch.Tensor, scheduler, ndim: int) -> torch.Tensor:
    """sigma = timestep / 1000 per sample, shaped to broadcast over (B, C, F, h, w)."""
    sigma = torch.as_tensor(timesteps, dtype=torch.float32) / scheduler.config.num_train_timesteps
    return sigma.reshape(-1, *[1] * (ndim - 1))


# ----------------------------------------------------------------------------- text


def text_encoder_dtype(dtype: torch.dtype) -> torch.dtype:
    """bf16 for an fp16 run: T5 activations overflow float16 (hence UMT5 ships in bf16)."""
    return torch.bfloat16 if dtype == torch.float16 else dtype


def token_ids(tokenizer, prompts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (len(prompts), length), cleaned and padded as WanPipeline does."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    tokens = tokenizer([prompt_clean(p) for p in prompts], padding="max_length", max_length=length,
                       truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


@torch.no_grad()
def umt5_states(tokenizer, text_encoder, prompts: list[str], length: int, device) -> torch.Tensor:
    """(len(prompts), length, D) last hidden states, zero after each prompt's tokens (as
    WanPipeline trims and re-pads them). A CPU-resident encoder runs on `device` for the call
    when that is a GPU with room for it, and goes back to the CPU."""
    ids, mask = token_ids(tokenizer, prompts, length)
    run_on = _encoding_device(text_encoder, torch.device(device))
    home = text_encoder.device
    text_encoder.to(run_on)
    try:
        states = text_encoder(ids.to(run_on), attention_mask=mask.to(run_on)).last_hidden_state
    finally:
        text_encoder.to(home)
    return states.masked_fill(~mask.bool().to(run_on)[..., None], 0.0)


def _encoding_device(text_encoder, device: torch.device) -> torch.device:
    if device.type != "cuda":
        return text_encoder.device
    needed = 1.25 * sum(p.numel() * p.element_size() for p in text_encoder.parameters())
    if torch.cuda.mem_get_info(device)[0] < needed:
        torch.cuda.empty_cache()  # training steps leave their activations' blocks reserved
    return device if torch.cuda.mem_get_info(device)[0] > needed else text_encoder.device  # else: on the CPU


# ----------------------------------------------------------------------------- VAE latents


def latent_statistics(vae, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latent mean and std, shaped (1, C, 1, 1, 1)."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=device, dtype=torch.float32).view(shape)
    std = torch.tensor(vae.config.latents_std, device=device, dtype=torch.float32).view(shape)
    return mean, std


def encode_normalised(vae, video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> a posterior sample, normalised (z - mean) / std as Wan's
    trainers do (WanPipeline decodes z * std + mean)."""
    latents = vae.encode(video.to(vae.device, vae.dtype)).latent_dist.sample().float()
    mean, std = latent_statistics(vae, latents.device)
    return (latents - mean) / std
