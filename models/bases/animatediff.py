"""AnimateDiff: a Stable Diffusion 1.5 UNet with AnimateDiff's motion modules (diffusers'
UNetMotionModel), CLIP ViT-L text, the SD VAE run frame by frame, DDIM on AnimateDiff's schedule.

A model is an `AnimateDiffPipeline` folder (its unet/ is already a UNetMotionModel), or a Stable
Diffusion 1.5 folder plus the config key `motion_adapter_path` (a `MotionAdapter` folder or hub id,
e.g. guoyww/animatediff-motion-adapter-v1-5-3), joined with `UNetMotionModel.from_unet2d`.

Single-frame rule: on a one-frame clip the motion modules are skipped (the identity), as in
ExponentialML/AnimateDiff-MotionDirector, whose `VanillaTemporalModule` returns its input when
the clip has one frame; diffusers' stock motion module would still run its attention (over a
sequence of one) and feed-forward. As for ZeroScope, the module's class is swapped for a thin
subclass: weights and state-dict keys stay the stock ones.

Exports of the temporal LoRA: `pytorch_lora_weights.safetensors` (diffusers keys, `unet.`
prefix, for `AnimateDiffPipeline.load_lora_weights`) and `motion_lora.safetensors` (AnimateDiff's
original MotionLoRA keys, up @ down = the weight delta, for ComfyUI-AnimateDiff-Evolved).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DDIMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from models.bases import tiny_parts
from models.bases.spec import SPATIAL, TEMPORAL, Components, ExportFile
from models.bases.unet_base import UNetBase, layers_inside, sd_vae_config
from models.fast_layers import cache_dtype, lean_attention
from utils.errors import UserError

ANIMATEDIFF_PIPELINE = "AnimateDiffPipeline"
STABLE_DIFFUSION_PIPELINE = "StableDiffusionPipeline"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer")
ADAPTER_HINT = "e.g. guoyww/animatediff-motion-adapter-v1-5-3 or a local MotionAdapter folder"
# The motion modules' positional table (`motion_max_seq_length`) of the v1-5-2 and v1-5-3 adapters
# (v1's is 24: diffusers then fails on longer clips itself).
MAX_FRAMES = 32


class SingleFrameSkippingMotionModule(AnimateDiffTransformer3D):
    """A motion module that is the identity on a one-frame clip (the mid block passes num_frames
    positionally, so the stock signature is kept)."""

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, class_labels=None, num_frames=1,
                cross_attention_kwargs=None):
        if num_frames == 1:
            return hidden_states
        return super().forward(hidden_states, encoder_hidden_states, timestep, class_labels, num_frames,
                               cross_attention_kwargs)


def apply_single_frame_rule(unet: torch.nn.Module) -> torch.nn.Module:
    """Skip every motion module on a one-frame clip (in place; returns the UNet)."""
    for module in unet.modules():
        if type(module) is AnimateDiffTransformer3D:
            module.__class__ = SingleFrameSkippingMotionModule
    return unet


def prepare_unet(unet: UNetMotionModel) -> UNetMotionModel:
    """A stock UNetMotionModel as we run it: the single-frame rule, the cached dtype, lean attention calls."""
    return cache_dtype(apply_single_frame_rule(lean_attention(unet)))


# LoRA paths: the linears inside these blocks whose name contains one of the keys.
# Spatial: MotionDirector's rule (as for ZeroScope): self-attention and feed-forward of every
# spatial Transformer2DModel block; cross-attention and proj_in/proj_out get none. Temporal: both
# temporal self-attentions and the feed-forward of every motion module, as the AnimateDiff port
# (its TemporalTransformerBlock targets); its proj_in/proj_out get none there either.
LORA_PATHS = {
    SPATIAL: (Transformer2DModel, ("attn1", "ff")),
    TEMPORAL: (AnimateDiffTransformer3D, ("attn1", "attn2", "ff")),
}

# Where activations are recomputed in the backward pass. "block": each down/mid/up block keeps
# only its inputs; "fine": each resnet, spatial transformer, motion module and resampler does
# (diffusers' own checkpointing of UNetMotionModel leaves the down/up motion modules out).
FINE_PARTS = ("resnets", "attentions", "motion_modules", "downsamplers", "upsamplers")

# AnimateDiff's noise schedule: linear betas 0.00085 -> 0.012 over 1000 steps, epsilon target
# (guoyww/AnimateDiff configs/inference/inference-v3.yaml and configs/training/v1/training.yaml;
# the MotionDirector port trains and samples with it too). Not SD 1.5's scaled_linear: the motion
# modules were trained on this one. DDIM with the authors' steps_offset 1, the rest its defaults.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
    steps_offset=1, clip_sample=False, prediction_type="epsilon",
)

# Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json).
FULL_SIZE_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32,
    cross_attention_dim=768, attention_head_dim=8,
)
# guoyww/animatediff-motion-adapter-v1-5-2 config.json (v2: with a mid-block motion module; v3,
# -v1-5-3, has none, so its step is a little smaller).
FULL_SIZE_ADAPTER = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True,
)
# The SD VAE, as SD 1.5 ships it.
FULL_SIZE_VAE = sd_vae_config(512)
# OpenAI CLIP ViT-L/14's text tower (77 tokens x 768), as SD 1.5 ships it.
FULL_SIZE_TEXT = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    hidden_act="quick_gelu", max_position_embeddings=77, projection_dim=768, vocab_size=49408, pad_token_id=1,
)

# The tiny test model: a two-level SD-style UNet (32 and 64 channels, so a channel mix-up shows),
# one motion module per layer plus the mid block's (v2-like), the tiny CLIP and VAE.
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, cross_attention_dim=32, attention_head_dim=8,
)
TINY_ADAPTER = dict(
    block_out_channels=(32, 64), motion_layers_per_block=1, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=4, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True,
)

DIFFUSERS_EXPORT = "pytorch_lora_weights.safetensors"
MOTION_LORA_EXPORT = "motion_lora.safetensors"
HOW_TO_LOAD_DIFFUSERS = """\
```python
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter
pipe = AnimateDiffPipeline.from_pretrained("{model}")  # a Stable Diffusion 1.5 folder also needs
# motion_adapter=MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-3") (the one trained with)
pipe.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                               steps_offset=1, clip_sample=False)  # AnimateDiff's schedule
pipe.load_lora_weights("temporal/export", adapter_name="motion")
video = pipe("<a new subject doing the motion>", num_frames=16).frames[0]
```"""
HOW_TO_LOAD_COMFYUI = """\
Copy it into `ComfyUI/models/animatediff_motion_lora/` (any name) and pick it in the
"Load AnimateDiff LoRA" node of ComfyUI-AnimateDiff-Evolved, with the motion model it was trained
with (strength 1 = as trained)."""


class AnimateDiffBase(UNetBase):
    name = "animatediff"
    label = "AnimateDiff (Stable Diffusion 1.5 + motion adapter, UNetMotionModel)"
    pipeline_classes = (ANIMATEDIFF_PIPELINE, STABLE_DIFFUSION_PIPELINE)
    hub_tags = ("text-to-video", "animatediff", "motion-lora")
    checkpoint_granularities = ("block", "fine")
    default_granularity = "fine"
    archs = ("animatediff",)
    single_video_config = "config_animatediff_single_video.yaml"
    # diffusers' AnimateDiff docs example: 16 frames, 25 DDIM steps, guidance 7.5, at SD 1.5's
    # native 512x512 (the pipeline's default size, unet sample_size 64 x 8).
    default_sampling = dict(width=512, height=512, num_frames=16, num_steps=25, guidance_scale=7.5)
    export_files = (
        ExportFile(DIFFUSERS_EXPORT, "diffusers (`AnimateDiffPipeline.load_lora_weights`)", HOW_TO_LOAD_DIFFUSERS),
        ExportFile(MOTION_LORA_EXPORT, "ComfyUI-AnimateDiff-Evolved (a MotionLoRA, AnimateDiff's original keys)",
                   HOW_TO_LOAD_COMFYUI),
    )

    def check_frames(self, frames: int, what: str) -> None:
        """The motion modules' sinusoidal positions cover MAX_FRAMES frames."""
        super().check_frames(frames, what)
        if frames > MAX_FRAMES:
            raise UserError(f"{what} must be at most {MAX_FRAMES} for {self.label} (its motion modules' positional "
                            f"table), got {frames}")

    # ------------------------------------------------------------------ loading

    def check_folder(self, path: Path) -> None:
        missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
        if missing:
            raise UserError(f"{path} is not a diffusers AnimateDiff or Stable Diffusion folder: missing "
                            f"{', '.join(m + '/' for m in missing)} (build the tiny test model with "
                            "`python -m utils.tools.tiny_model DIR --base animatediff`)")

    accepted_options = ("motion_adapter_path",)

    def check_options(self, model_index: dict, options: dict) -> None:
        super().check_options(model_index, options)
        adapter = options.get("motion_adapter_path") or ""
        kind = model_index.get("_class_name")
        if kind == STABLE_DIFFUSION_PIPELINE and not adapter:
            raise UserError(f"a Stable Diffusion folder needs motion_adapter_path (a MotionAdapter, {ADAPTER_HINT})")
        if kind == ANIMATEDIFF_PIPELINE and adapter:
            raise UserError("this AnimateDiffPipeline folder holds its own motion modules: unset motion_adapter_path "
                            "(it is for Stable Diffusion folders)")
        if adapter:
            check_adapter_path(adapter)

    def load(self, model_path: str, device, dtype: torch.dtype, options: dict | None = None) -> Components:
        """Tokenizer, frozen text encoder, VAE, the UNetMotionModel (single-frame rule applied) and
        DDIM on AnimateDiff's schedule (whatever scheduler the folder holds)."""
        tokenizer = CLIPTokenizer.from_pretrained(model_path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(model_path, subfolder="text_encoder", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(model_path, subfolder="vae", torch_dtype=dtype)
        unet = prepare_unet(load_motion_unet(model_path, (options or {}).get("motion_adapter_path"), dtype))
        return Components(self, tokenizer, text_encoder, vae, unet, self.default_scheduler())

    def default_scheduler(self):
        return DDIMScheduler(**SCHEDULER_CONFIG)

    # ------------------------------------------------------------------ the denoiser

    def prepare_denoiser(self, denoiser):
        return prepare_unet(denoiser)

    def predict(self, denoiser, noisy, timesteps, text):
        """UNetMotionModel takes one text state per frame (batch B*F), as AnimateDiffPipeline repeats them."""
        text = text.repeat_interleave(noisy.shape[2], dim=0)
        return denoiser(noisy, timesteps, encoder_hidden_states=text).sample

    def lora_targets(self, denoiser, path):
        parent_class, keys = LORA_PATHS[path]
        return layers_inside(denoiser, parent_class, keys)

    def checkpoint_targets(self, denoiser, granularity):
        self.check_granularity(granularity)
        blocks = [*denoiser.down_blocks, denoiser.mid_block, *denoiser.up_blocks]
        if granularity == "block":
            return blocks
        return [m for block in blocks for part in FINE_PARTS for m in (getattr(block, part, None) or [])]

    # ------------------------------------------------------------------ exports

    def export(self, state: dict[str, torch.Tensor], path: str, folder: Path) -> list[Path]:
        """The temporal LoRA for diffusers and for ComfyUI-AnimateDiff-Evolved (scale 1: up @ down is
        the weight delta in both, as in ours, whose alpha equals the rank)."""
        if path != TEMPORAL:
            return []
        return [write_safetensors(diffusers_lora_state(state), Path(folder) / DIFFUSERS_EXPORT),
                write_safetensors(motion_lora_state(state), Path(folder) / MOTION_LORA_EXPORT)]

    # ------------------------------------------------------------------ tools

    def build_tiny(self, out_dir: Path, seed: int = 0) -> Path:
        """A tiny random AnimateDiffPipeline folder, assembled and saved by stock diffusers
        (deterministic in `seed`; global RNG untouched)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory(prefix="md_tiny_") as scratch:
            saved = Path(scratch) / "pipeline"
            with quiet_empty_fp32_warning():  # the pipeline joins the UNet and the adapter (from_unet2d)
                pipeline = AnimateDiffPipeline(**tiny_parts_of_pipeline(Path(scratch), seed))
            pipeline.save_pretrained(saved)
            for entry in sorted(saved.iterdir(), key=lambda p: p.name == "model_index.json"):
                shutil.rmtree(out / entry.name, ignore_errors=True)
                shutil.move(str(entry), out / entry.name)  # model_index.json last: it marks a complete folder
        return out

    def architecture(self, arch: str) -> dict:
        if arch == "tiny":
            unet, adapter, text, vae = TINY_UNET, TINY_ADAPTER, tiny_parts.TINY_TEXT_ENCODER, tiny_parts.TINY_VAE
        elif arch in self.archs:
            unet, adapter, text, vae = FULL_SIZE_UNET, FULL_SIZE_ADAPTER, FULL_SIZE_TEXT, FULL_SIZE_VAE
        else:
            raise ValueError(f"unknown {self.name} arch {arch!r}; choose from {self.archs}")
        return {"denoiser": motion_unet_config(unet, adapter), "vae": vae, "text": (77, text["hidden_size"]),
                "text_encoder": text}

    def folder_architecture(self, model_path: str) -> dict:
        """Of an AnimateDiffPipeline folder (its unet/ config is the UNetMotionModel's)."""
        unet = dict(UNetMotionModel.load_config(model_path, subfolder="unet"))
        vae = dict(AutoencoderKL.load_config(model_path, subfolder="vae"))
        return {"denoiser": unet, "vae": vae, "text": (77, unet["cross_attention_dim"])}

    def build_denoiser(self, config) -> torch.nn.Module:
        return prepare_unet(UNetMotionModel.from_config(config))

    def random_components(self, arch: str, device, dtype: torch.dtype) -> Components:
        """SD 1.5 + motion adapter v1-5-2 with random weights (UNetBase's, without diffusers'
        warning about the adapter's empty float32 module list)."""
        with quiet_empty_fp32_warning():
            return super().random_components(arch, device, dtype)


# ---------------------------------------------------------------------- loading


def check_adapter_path(adapter: str) -> None:
    """A local MotionAdapter folder must hold its config.json; anything else must look like a hub id."""
    path = Path(adapter).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"motion_adapter_path {adapter} is not a MotionAdapter folder (no config.json); "
                            f"give one, {ADAPTER_HINT}")
        return
    from models.bases import is_hub_id

    if not is_hub_id(adapter):
        raise UserError(f"motion_adapter_path not found: {adapter} ({ADAPTER_HINT})")


def load_motion_unet(model_path: str, adapter_path: str | None, dtype: torch.dtype) -> UNetMotionModel:
    """The folder's UNetMotionModel, or its SD UNet joined with the MotionAdapter at `adapter_path`."""
    if not adapter_path:
        return UNetMotionModel.from_pretrained(model_path, subfolder="unet", torch_dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(model_path, subfolder="unet", torch_dtype=dtype)
    try:
        adapter = MotionAdapter.from_pretrained(os.path.expanduser(adapter_path), torch_dtype=dtype)
    except OSError as err:
        raise UserError(f"cannot load the motion adapter {adapter_path}: {str(err).splitlines()[0]}") from None
    try:
        with quiet_empty_fp32_warning():
            return UNetMotionModel.from_unet2d(unet, adapter)
    except ValueError as err:  # block or layer counts differ: an adapter for another UNet (e.g. SDXL)
        raise UserError(f"motion adapter {adapter_path} does not fit the UNet of {model_path}: {err}") from None


@contextmanager
def quiet_empty_fp32_warning():
    """diffusers warns at every `.to(dtype)` of a UNetMotionModel that its modules to keep in
    float32 are [] (none): nothing to act on, so not shown."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def motion_unet_config(unet: dict, adapter: dict) -> dict:
    """The UNetMotionModel config of an SD UNet config joined with a MotionAdapter config (diffusers'
    own `from_unet2d` merge, run on meta tensors: nothing allocated)."""
    with torch.device("meta"):
        model = UNetMotionModel.from_unet2d(UNet2DConditionModel(**unet), MotionAdapter(**adapter), load_weights=False)
    return dict(model.config)


def tiny_parts_of_pipeline(scratch: Path, seed: int) -> dict:
    """The stock pieces of the tiny AnimateDiffPipeline (the tiny CLIP text encoder and tokenizer
    are written to the `scratch` folder and read back: tiny_parts builds them as files)."""
    vocab_size = tiny_parts.write_clip_tokenizer(scratch / "tokenizer")
    tiny_parts.save_clip_text_encoder(scratch / "text_encoder", seed + 3, vocab_size)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    torch.manual_seed(seed + 1)
    adapter = MotionAdapter(**TINY_ADAPTER)
    # So that the motion modules matter in tests: zero-initialised parameters (if any) and the
    # norms' identity affines get random values.
    tiny_parts.randomize_zero_and_norm_params(adapter, torch.Generator().manual_seed(seed + 1))
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**tiny_parts.TINY_VAE)
    return dict(unet=unet, motion_adapter=adapter, vae=vae, scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
                tokenizer=CLIPTokenizer.from_pretrained(scratch / "tokenizer"),
                text_encoder=CLIPTextModel.from_pretrained(scratch / "text_encoder"))


# ---------------------------------------------------------------------- exports


def diffusers_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft keys -> the keys `AnimateDiffPipeline.load_lora_weights` reads (the `unet.` prefix)."""
    return {f"unet.{key}": tensor for key, tensor in state.items()}


def motion_lora_key(peft_key: str) -> str:
    """A motion-module peft key -> AnimateDiff's original MotionLoRA key.

    diffusers renamed the original motion modules (`temporal_transformer` dropped, attention_blocks.0/1
    -> attn1/attn2: its `convert_animatediff_checkpoint_to_diffusers`); this undoes it. The attention
    linears take the attention-processor form guoyww's and ADE's loaders read
    (`processor.to_q_lora.down.weight`; to_out.0 -> `processor.to_out_lora`); the feed-forward linears,
    which no processor holds, take a form those loaders map back to `ff.net.0.proj` / `ff.net.2`
    (they drop `processor.`, `_lora`, `down.` and `up.`).
    """
    module, _, kind = peft_key.partition(".lora_")
    direction = {"A.weight": "down", "B.weight": "up"}[kind]
    head, sep, tail = module.partition(".transformer_blocks.")
    if not sep or ".motion_modules." not in head:
        raise ValueError(f"{peft_key} is not a motion-module LoRA key")
    block, _, layer = tail.partition(".")
    attention, _, linear = layer.partition(".")
    attention = {"attn1": "attention_blocks.0", "attn2": "attention_blocks.1"}.get(attention)
    if attention is not None:
        linear = "to_out" if linear == "to_out.0" else linear
        name = f"{attention}.processor.{linear}_lora"
    elif layer in ("ff.net.0.proj", "ff.net.2"):
        name = f"{layer}_lora"
    else:
        raise ValueError(f"{peft_key}: no MotionLoRA name for layer {layer}")
    return f"{head}.temporal_transformer.transformer_blocks.{block}.{name}.{direction}.weight"


def motion_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft keys -> a MotionLoRA state dict (down = lora_A, up = lora_B; scale 1, no alpha)."""
    return {motion_lora_key(key): tensor for key, tensor in state.items()}


def write_safetensors(state: dict[str, torch.Tensor], file: Path) -> Path:
    """Write float32 tensors atomically (temporary name, then rename)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}, str(tmp),
              metadata={"format": "pt"})
    os.replace(tmp, file)
    return file
