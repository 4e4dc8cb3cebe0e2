"""Training config: typed dataclasses merged with a YAML file and `key=value` overrides.

The field names and defaults are those of the original `MotionDirector_train.py`
(its `main(...)` keyword arguments and its dataset classes), so the original YAML
files load unchanged. Unlike the original, whose `**kwargs` swallowed anything,
an unknown or misspelled key is an error with a "did you mean" hint.
"""

import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException

from utils.errors import UserError

logger = logging.getLogger(__name__)

DATASET_TYPES = ("folder", "single_video", "image", "json")
MIXED_PRECISION = ("no", "fp16", "bf16")
DEFAULT_CONFIG = "./configs/config_multi_videos.yaml"  # the original CLI's default


@dataclass
class TrainData:
    """`train_data:` — each dataset type reads the keys it needs."""

    # Shared by every dataset type.
    width: int = 256
    height: int = 256
    use_bucketing: bool = False  # keep the aspect ratio (shorter side snapped to 64s)
    # The original's folder dataset defaulted to 16, its json/single_video ones to 4.
    n_sample_frames: int = 16
    fallback_prompt: str = ""  # used when a clip or image has no .txt caption
    # 'folder': every .mp4 in `path`, resampled to `fps`.
    path: str = "./data"
    fps: int = 8  # also the frame rate of the validation videos
    # 'single_video' and 'json': take every `frame_step`-th frame.
    frame_step: int = 1
    sample_start_idx: int = 1
    single_video_path: str = ""
    single_video_prompt: str = ""
    # 'image'
    image_dir: str = ""
    single_img_prompt: str = ""
    # 'json' (Video-BLIP2-Preprocessor layout)
    json_path: str = ""
    vid_data_key: str = "video_path"
    # Accepted, ignored: the original dataset classes took these but never acted on them.
    use_caption: bool = False
    base_width: int = 256
    base_height: int = 256
    preprocessed: bool = False
    json_data: Any = None


@dataclass
class ValidationData:
    """`validation_data:` — preview sampling during training (SPEC §5 defaults)."""

    # A string or a list of strings (OmegaConf has no str|list type, hence Any);
    # empty means "the training clip's own prompt". Read it via validation_prompts().
    prompt: Any = ""
    sample_preview: bool = True
    num_frames: int = 16
    width: int = 384
    height: int = 384
    num_inference_steps: int = 30
    guidance_scale: float = 12.0
    spatial_scale: float = 0.0  # spatial LoRA scale while sampling (0 = motion only)
    noise_prior: float = 0.0  # weight of the DDIM-inverted training latents, in [0, 1]


@dataclass
class TrainConfig:
    """The whole training run; `main(...)` of the original, key for key."""

    pretrained_model_path: str = MISSING
    # AnimateDiff on a Stable Diffusion 1.5 folder: the MotionAdapter (folder or hub id) to join to it.
    motion_adapter_path: Optional[str] = None
    output_dir: str = MISSING
    train_data: TrainData = field(default_factory=TrainData)
    validation_data: ValidationData = field(default_factory=ValidationData)
    dataset_types: List[str] = field(default_factory=lambda: ["json"])

    # Which LoRA paths train (SPEC §2-3).
    use_unet_lora: bool = False  # the original's default; must be true (nothing else trains)
    lora_rank: int = 16
    lora_unet_dropout: float = 0.1
    lora_path: str = ""  # start from LoRA weights in <lora_path>/{spatial,temporal}/lora/
    single_spatial_lora: bool = False  # one shared spatial LoRA instead of one per video
    train_temporal_lora: bool = True
    # Ablations (not in the original): false trains the temporal LoRA alone on whole clips, with no
    # spatial path (the paper's "coupled tuning"); false drops the appearance-debiased term.
    train_spatial_lora: bool = True
    appearance_debiased_loss: bool = True
    random_hflip_img: float = -1.0  # probability of a flipped frame for the spatial loss
    # Base-specific: which layers each LoRA path adapts, for a base that lets you choose (Wan:
    # {spatial: [attn1, ffn], temporal: [attn1]}, the default; ZeroScope: attn1 / attn2 / ff, and
    # temp_convs on the temporal path, default the original's). AnimateDiff has fixed layers.
    lora_layers: Optional[Dict[str, Any]] = None

    # Noise.
    use_offset_noise: bool = False
    offset_noise_strength: float = 0.1
    rescale_schedule: bool = False  # zero-terminal-SNR betas (only without offset noise)

    # Optimisation (one AdamW + scheduler per LoRA path).
    learning_rate: float = 5e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-08
    use_8bit_adam: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    train_batch_size: int = 1
    max_train_steps: int = 500
    gradient_accumulation_steps: int = 1
    max_grad_norm: Optional[float] = None  # gradient clipping; None = off, as in the original

    # Speed and memory.
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = False
    enable_xformers_memory_efficient_attention: bool = True
    enable_torch_2_attn: bool = False
    cache_latents: bool = False
    cached_latent_dir: Optional[str] = None  # reuse latents cached by an earlier run

    # Saving, validation, logging.
    checkpointing_steps: int = 500
    validation_steps: int = 100
    save_pretrained_model: bool = True
    resume_from_checkpoint: Optional[str] = None
    seed: Optional[int] = None
    logger_type: str = "tensorboard"

    # Our additions.
    num_workers: int = 0  # DataLoader worker processes

    # Accepted, ignored: original keys for full fine-tuning, text-encoder training
    # and dataset mixing, which MotionDirector never used. They load so that old
    # configs keep working; load_config() warns when one is set.
    text_encoder_gradient_checkpointing: bool = False  # the text encoder runs without grad
    trainable_modules: Optional[List[str]] = None
    trainable_text_modules: Optional[List[str]] = None
    train_text_encoder: bool = False
    extra_unet_params: Optional[Dict[str, Any]] = None
    extra_text_encoder_params: Optional[Dict[str, Any]] = None
    unet_lora_modules: List[str] = field(default_factory=list)
    text_encoder_lora_modules: List[str] = field(default_factory=list)
    extra_train_data: List[Any] = field(default_factory=list)
    extend_dataset: bool = False
    resume_step: Optional[int] = None
    eval_train: bool = False


# Set to a non-default value, these get a warning (text_encoder_gradient_checkpointing
# does not: every original config sets it, and skipping it changes nothing).
IGNORED_KEYS = (
    "trainable_modules", "trainable_text_modules", "train_text_encoder",
    "extra_unet_params", "extra_text_encoder_params", "unet_lora_modules",
    "text_encoder_lora_modules", "extra_train_data", "extend_dataset",
    "resume_step", "eval_train",
    "train_data.use_caption", "train_data.base_width", "train_data.base_height",
    "train_data.preprocessed", "train_data.json_data",
)


# ---------------------------------------------------------------- loading

def load_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Schema, then the YAML file, then command-line overrides; typo-proof."""
    merged = _merge(OmegaConf.structured(TrainConfig), _read_yaml(path), path)
    merged = _merge(merged, _parse_overrides(overrides), "command-line overrides")
    # YAML 1.1 reads a bare `no` as false, so `mixed_precision=no` arrives as "False".
    if str(merged.mixed_precision).lower() in ("false", "none"):
        merged.mixed_precision = "no"
    _warn_ignored(merged)
    return merged


def _read_yaml(path: str) -> DictConfig:
    if not Path(path).is_file():
        raise UserError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise UserError(f"cannot parse {path}: {_yaml_problem(e)}") from e
    if not isinstance(loaded, DictConfig):
        raise UserError(f"{path} must hold a mapping of config keys, not a list")
    return loaded


def _yaml_problem(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    if mark is not None:  # a YAML syntax error: say what and where
        return f"{getattr(e, 'problem', None) or 'syntax error'} (line {mark.line + 1}, column {mark.column + 1})"
    return str(e).splitlines()[0]


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        check_override(item)
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise UserError(f"malformed override: {str(e).splitlines()[0]}") from e


def check_override(item: str) -> None:
    if "=" not in item or item.startswith("="):
        raise UserError(f"malformed override '{item}': expected key=value, e.g. learning_rate=1e-4")


def _merge(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    """Merge, turning OmegaConf's multi-line errors into one-line UserErrors."""
    try:
        merged = OmegaConf.merge(base, update)
        OmegaConf.to_container(merged, resolve=True)  # surface bad ${...} interpolations now
        return merged
    except ConfigKeyError as e:
        raise UserError(_unknown_key_message(e, source)) from e
    except InterpolationResolutionError as e:
        raise UserError(f"bad ${{...}} interpolation in {source}: {str(e).splitlines()[0]}") from e
    except OmegaConfBaseException as e:
        raise UserError(_bad_value_message(e, source)) from e


def _unknown_key_message(e: ConfigKeyError, source: str) -> str:
    full_key = e.full_key or e.key
    msg = f"unknown config key '{full_key}' in {source}"
    if dataclasses.is_dataclass(e.object_type) and e.key is not None:
        names = [f.name for f in dataclasses.fields(e.object_type)]
        close = difflib.get_close_matches(str(e.key), names, n=1)
        if close:
            parent = str(full_key).rpartition(".")[0]
            msg += f"; did you mean '{parent + '.' if parent else ''}{close[0]}'?"
    return msg


def _bad_value_message(e: OmegaConfBaseException, source: str) -> str:
    key = getattr(e, "full_key", None)
    if not key:  # e.g. a scalar where a section belongs: only the raw message helps
        return f"invalid config in {source}: {str(e).splitlines()[0]}"
    expected = ""
    if dataclasses.is_dataclass(e.object_type):
        hint = typing.get_type_hints(e.object_type).get(e.key)
        expected = f"; expected {_type_name(hint)}" if hint is not None else ""
    return f"config key '{key}' in {source} has an invalid value {e.value!r}{expected}"


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _warn_ignored(cfg: DictConfig) -> None:
    defaults = OmegaConf.structured(TrainConfig)
    changed = [k for k in IGNORED_KEYS if OmegaConf.select(cfg, k) != OmegaConf.select(defaults, k)]
    if changed:
        logger.warning("config keys accepted for compatibility but ignored: %s", ", ".join(changed))


# ---------------------------------------------------------------- validation

def validate_config(cfg: DictConfig) -> None:
    """Raise UserError for the first value out of range; the message names the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"config key '{missing[0]}' must be set (in the YAML or as {missing[0]}=...)")
    for key, ok, requirement in _range_checks(cfg):
        if not ok:
            raise UserError(f"config key '{key}' = {OmegaConf.select(cfg, key)!r} {requirement}")


def _range_checks(cfg: DictConfig) -> List[Tuple[str, bool, str]]:
    td, vd = cfg.train_data, cfg.validation_data
    checks = [
        ("use_unet_lora", cfg.use_unet_lora, "must be true: MotionDirector trains only LoRA weights"),
        ("lora_rank", cfg.lora_rank > 0, "must be > 0"),
        ("lora_unet_dropout", 0 <= cfg.lora_unet_dropout < 1, "must be in [0, 1)"),
        ("learning_rate", cfg.learning_rate > 0, "must be > 0"),
        ("lr_warmup_steps", cfg.lr_warmup_steps >= 0, "must be >= 0"),
        ("num_workers", cfg.num_workers >= 0, "must be >= 0"),
        ("validation_data.noise_prior", 0 <= vd.noise_prior <= 1, "must be in [0, 1]"),
        ("validation_data.prompt", _is_prompt(vd.prompt), "must be a string or a list of strings"),
        ("dataset_types", len(cfg.dataset_types) > 0, f"must list at least one of {list(DATASET_TYPES)}"),
        ("mixed_precision", cfg.mixed_precision in MIXED_PRECISION, f"must be one of {list(MIXED_PRECISION)}"),
        ("lr_scheduler", cfg.lr_scheduler in _scheduler_names(), f"must be one of {_scheduler_names()}"),
        ("logger_type", cfg.logger_type in _logger_names(), f"must be one of {_logger_names()}"),
        ("train_spatial_lora", cfg.train_spatial_lora or cfg.train_temporal_lora,
         "with train_temporal_lora false leaves nothing to train; set one of them true"),
    ]
    for key in ("max_train_steps", "checkpointing_steps", "validation_steps",
                "gradient_accumulation_steps", "train_batch_size"):
        checks.append((key, cfg[key] >= 1, "must be >= 1"))
    for key in ("n_sample_frames", "fps", "frame_step"):
        checks.append((f"train_data.{key}", td[key] >= 1, "must be >= 1"))
    for key in ("num_frames", "num_inference_steps"):
        checks.append((f"validation_data.{key}", vd[key] >= 1, "must be >= 1"))
    for section in ("train_data", "validation_data"):
        for key in ("width", "height"):
            size = cfg[section][key]
            checks.append((f"{section}.{key}", size > 0 and size % 8 == 0,
                           "must be a positive multiple of 8 (the VAE downsamples by 8)"))
    for i, name in enumerate(cfg.dataset_types):
        checks.append((f"dataset_types[{i}]", name in DATASET_TYPES, f"must be one of {list(DATASET_TYPES)}"))
    return checks


def _is_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return True
    return OmegaConf.is_list(prompt) and all(isinstance(p, str) for p in prompt)


def _scheduler_names() -> List[str]:
    from diffusers.optimization import SchedulerType  # heavy import, only when validating

    return [s.value for s in SchedulerType]


def _logger_names() -> List[str]:
    try:
        from accelerate.utils import LoggerType

        names = [t.value for t in LoggerType]
    except ImportError:
        names = ["all", "tensorboard", "wandb"]
    return names + ["none"]  # "none": no experiment tracker


def validation_prompts(validation_data: DictConfig) -> List[str]:
    """The validation prompts as a list (the YAML may give one string or a list)."""
    prompt = validation_data.prompt
    if isinstance(prompt, str):
        return [prompt] if prompt else []
    return list(prompt)


# ---------------------------------------------------------------- saving

def save_config(cfg: DictConfig, path: str) -> None:
    """Write the resolved config, so a run's outputs record exactly what ran."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
