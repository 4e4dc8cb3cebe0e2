"""ZeroScope / ModelScopeT2V: the stock diffusers UNet3DConditionModel, CLIP, AutoencoderKL, DDIM.

The original MotionDirector's base. When the UNet gets one frame, the original skips
`transformer_in`, every temporal attention and every temporal conv. (Its non-checkpointed path
kept `mid_block.temp_convs[0]`, but every shipped config trained with gradient checkpointing,
whose blocks skip that conv too; the released spatial LoRAs were trained through that forward.)
We swap the temporal modules' classes for thin subclasses: the weights and state-dict keys stay
exactly the stock ones, and checkpointing never changes the math.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import (
    TransformerTemporalModel,
    TransformerTemporalModelOutput,
)
from transformers import CLIPTextModel, CLIPTokenizer

from models.bases import tiny_parts, zeroscope_layers
from models.bases.spec import Components
from models.bases.unet_base import UNetBase, sd_vae_config
from models.fast_layers import cache_dtype, lean_attention
from utils.errors import UserError

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class SingleFrameSkippingTransformer(TransformerTemporalModel):
    """A temporal transformer that is the identity on a one-frame clip."""

    def forward(self, hidden_states, *args, num_frames: int = 1, return_dict: bool = True, **kwargs):
        if num_frames == 1:
            return TransformerTemporalModelOutput(sample=hidden_states) if return_dict else (hidden_states,)
        return super().forward(hidden_states, *args, num_frames=num_frames, return_dict=return_dict, **kwargs)


class SingleFrameSkippingConv(TemporalConvLayer):
    """A temporal conv block that is the identity on a one-frame clip."""

    def forward(self, hidden_states: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        if num_frames == 1:
            return hidden_states
        return super().forward(hidden_states, num_frames=num_frames)


def apply_single_frame_rule(unet: torch.nn.Module) -> torch.nn.Module:
    """Give the UNet the original's single-frame forward (in place; returns the UNet)."""
    for module in unet.modules():
        if type(module) is TransformerTemporalModel:
            module.__class__ = SingleFrameSkippingTransformer
        elif type(module) is TemporalConvLayer:
            module.__class__ = SingleFrameSkippingConv
    return unet


# Where activations are recomputed in the backward pass. "block": each down/mid/up block (and
# transformer_in) keeps only its inputs; "fine": each resnet, temporal conv, spatial and temporal
# transformer and resampler does, as the original MotionDirector's UNet did. Fine is the default:
# predicted for ZeroScope at 384x384x16 fp16 (benchmarks/estimate.py), 6.2 GB peak against 14.3 GB
# per block, for fewer recomputed FLOPs (a block's recomputation also reruns what fine keeps).
FINE_PARTS = ("resnets", "temp_convs", "attentions", "temp_attentions", "downsamplers", "upsamplers")

# ZeroScope v2 576w and ModelScope T2V 1.7B share one UNet: diffusers converts the ModelScope
# checkpoint into `UNet3DConditionModel()` with its default config (these values; note that
# UNet3D reads attention_head_dim=64 as 64 heads), and ZeroScope v2 is a fine-tune of it.
FULL_SIZE_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32,
    cross_attention_dim=1024, attention_head_dim=64,
)
FULL_SIZE_VAE = sd_vae_config(768)
# OpenCLIP ViT-H/14's text tower, as ZeroScope / ModelScope ship it.
FULL_SIZE_TEXT = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    hidden_act="gelu", max_position_embeddings=77, projection_dim=512, vocab_size=49408, pad_token_id=0,
)

# The tiny test model mirrors the reference tiny model of the original code (reference.json
# "tiny_model"): a UNet3D with two 32-channel levels, a VAE with four blocks (scale factor 8, so
# 64x64 frames give 8x8 latents), a 2-layer CLIP text encoder of width 32.
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 32),  # < 32 is impossible: TemporalConvLayer uses GroupNorm(32, C)
    layers_per_block=1, norm_num_groups=32, cross_attention_dim=32, attention_head_dim=8,
)

# The (reconstructed) ZeroScope / ModelScope scheduler config.
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.15.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "thresholding": False,
    "trained_betas": None,
}

MODEL_INDEX = {
    "_class_name": "TextToVideoSDPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def prepare_unet(unet: UNet3DConditionModel) -> UNet3DConditionModel:
    """A stock UNet3D as we run it: the single-frame rule, the cached dtype, lean attention calls."""
    return cache_dtype(apply_single_frame_rule(lean_attention(unet)))


def load_unet(model_path: str, dtype: torch.dtype = torch.float32) -> UNet3DConditionModel:
    """The pipeline's UNet (local diffusers folder or hub id), prepared as `prepare_unet` says."""
    return prepare_unet(UNet3DConditionModel.from_pretrained(model_path, subfolder="unet", torch_dtype=dtype))


class ZeroScopeBase(UNetBase):
    name = "zeroscope"
    label = "ZeroScope / ModelScope (UNet3DConditionModel)"
    pipeline_classes = ("TextToVideoSDPipeline",)
    hub_tags = ("text-to-video", "zeroscope", "modelscope")
    checkpoint_granularities = ("block", "fine")
    default_granularity = "fine"
    archs = ("zeroscope", "modelscope")
    accepted_options = ("lora_layers",)

    def check_options(self, model_index: dict, options: dict) -> None:
        super().check_options(model_index, options)
        zeroscope_layers.layer_choice(options.get("lora_layers"))

    def check_folder(self, path: Path) -> None:
        missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
        if missing:
            raise UserError(
                f"{path} is not a diffusers text-to-video folder: missing {', '.join(m + '/' for m in missing)} "
                "(clone e.g. cerspense/zeroscope_v2_576w, or build the tiny test model with "
                "`python -m utils.tools.tiny_model DIR`)")

    def load(self, model_path: str, device, dtype: torch.dtype, options: dict | None = None) -> Components:
        """Tokenizer, frozen text encoder, VAE and UNet (single-frame rule applied), DDIM scheduler."""
        tokenizer = CLIPTokenizer.from_pretrained(model_path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(model_path, subfolder="text_encoder", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(model_path, subfolder="vae", torch_dtype=dtype)
        unet = load_unet(model_path, dtype=dtype)
        zeroscope_layers.set_layer_choice(unet, (options or {}).get("lora_layers"))
        scheduler = DDIMScheduler.from_pretrained(model_path, subfolder="scheduler")
        return Components(self, tokenizer, text_encoder, vae, unet, scheduler)

    def default_scheduler(self):
        return DDIMScheduler.from_config(SCHEDULER_CONFIG)

    def prepare_denoiser(self, denoiser):
        return prepare_unet(denoiser)

    def predict(self, denoiser, noisy, timesteps, text):
        return denoiser(noisy, timesteps, encoder_hidden_states=text).sample

    def lora_targets(self, denoiser, path):
        return zeroscope_layers.targets(denoiser, path)

    def lora_targets_of_file(self, denoiser, path, file):
        return zeroscope_layers.targets_of_file(denoiser, path, file) or self.lora_targets(denoiser, path)

    def checkpoint_targets(self, denoiser, granularity):
        self.check_granularity(granularity)
        blocks = [*denoiser.down_blocks, denoiser.mid_block, *denoiser.up_blocks]
        if granularity == "block":
            return [denoiser.transformer_in, *blocks]
        parts = [m for block in blocks for part in FINE_PARTS for m in (getattr(block, part, None) or [])]
        return [denoiser.transformer_in, *parts]

    def build_tiny(self, out_dir: Path, seed: int = 0) -> Path:
        """A tiny random TextToVideoSDPipeline folder (deterministic in `seed`; global RNG untouched)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            vocab_size = tiny_parts.write_clip_tokenizer(out / "tokenizer")
            torch.manual_seed(seed)
            unet = UNet3DConditionModel(**TINY_UNET)
            tiny_parts.randomize_zero_and_norm_params(unet, torch.Generator().manual_seed(seed + 1))
            unet.save_pretrained(out / "unet", safe_serialization=True)
            torch.manual_seed(seed + 2)
            AutoencoderKL(**tiny_parts.TINY_VAE).save_pretrained(out / "vae", safe_serialization=True)
            tiny_parts.save_clip_text_encoder(out / "text_encoder", seed + 3, vocab_size)
        tiny_parts.write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
        tiny_parts.write_json(out / "model_index.json", MODEL_INDEX)  # last: its presence marks a complete folder
        return out

    def architecture(self, arch: str) -> dict:
        if arch == "tiny":
            return {"denoiser": TINY_UNET, "vae": tiny_parts.TINY_VAE,
                    "text": (77, tiny_parts.TINY_TEXT_ENCODER["hidden_size"])}
        if arch not in self.archs:
            raise ValueError(f"unknown {self.name} arch {arch!r}; choose from {self.archs}")
        return {"denoiser": FULL_SIZE_UNET, "vae": FULL_SIZE_VAE, "text": (77, FULL_SIZE_TEXT["hidden_size"]),
                "text_encoder": FULL_SIZE_TEXT}

    def folder_architecture(self, model_path: str) -> dict:
        from transformers import CLIPTextConfig

        unet = dict(UNet3DConditionModel.load_config(model_path, subfolder="unet"))
        vae = dict(AutoencoderKL.load_config(model_path, subfolder="vae"))
        text = CLIPTextConfig.from_pretrained(model_path, subfolder="text_encoder").to_dict()
        return {"denoiser": unet, "vae": vae, "text": (77, unet["cross_attention_dim"]), "text_encoder": text}

    def build_denoiser(self, config) -> torch.nn.Module:
        return prepare_unet(UNet3DConditionModel(**config))
