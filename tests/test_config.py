"""Config loading: shipped configs, overrides, typo and type errors, range checks, saving."""

import re
from pathlib import Path

import pytest

from utils.cli import parse_train_args
from utils.training.config import load_config, save_config, validate_config, validation_prompts
from utils.errors import UserError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
TINY = str(Path(__file__).parent.parent / "configs" / "config_tiny_cpu.yaml")


def test_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"config_multi_videos.yaml", "config_single_video.yaml", "config_single_video_24.yaml",
            "config_single_image.yaml", "config_multi_images.yaml", "config_tiny_cpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_validates(path):
    cfg = load_config(str(path))
    validate_config(cfg)
    assert cfg.use_unet_lora
    assert validation_prompts(cfg.validation_data)


ORIGINAL_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "seed" / "configs"
# Only where the data lives and the captions of our own test_data/ may differ from the original.
DATA_KEYS = {"pretrained_model_path", "train_data.path", "train_data.fallback_prompt", "train_data.image_dir",
             "train_data.single_img_prompt", "train_data.single_video_path", "train_data.single_video_prompt",
             "validation_data.prompt"}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


@pytest.mark.parametrize("name", ["config_multi_videos.yaml", "config_single_video.yaml",
                                  "config_single_video_24.yaml", "config_single_image.yaml",
                                  "config_multi_images.yaml"])
def test_shipped_configs_keep_every_original_value(name):
    from omegaconf import OmegaConf

    if not (ORIGINAL_CONFIGS / name).is_file():
        pytest.skip("../shared/seed/configs is not available")
    original = _flat(OmegaConf.to_container(OmegaConf.load(ORIGINAL_CONFIGS / name)))
    ours = _flat(OmegaConf.to_container(OmegaConf.load(Path(TINY).parent / name)))
    differ = {k: (v, ours.get(k, "<missing>")) for k, v in original.items()
              if k not in DATA_KEYS and ours.get(k, "<missing>") != v}
    assert not differ, f"{name}: key: (original, ours) {differ}"
    assert not set(ours) - set(original) - {"train_data.fallback_prompt"}, "extra keys change the original's run"


def test_original_values_survive():
    cfg = load_config(str(Path(TINY).parent / "config_single_video_24.yaml"))
    assert (cfg.train_data.width, cfg.train_data.height, cfg.train_data.n_sample_frames) == (576, 320, 24)
    assert cfg.learning_rate == pytest.approx(5e-4)
    assert cfg.validation_data.noise_prior == pytest.approx(0.5)
    assert cfg.lr_scheduler == "constant" and cfg.adam_epsilon == pytest.approx(1e-8)  # main() defaults


def test_overrides_apply():
    cfg = load_config(TINY, ["learning_rate=1e-3", "train_data.n_sample_frames=4"])
    assert cfg.learning_rate == pytest.approx(1e-3)
    assert cfg.train_data.n_sample_frames == 4
    assert cfg.lora_rank == 4  # untouched keys keep the file's value


def test_prompt_may_be_a_string():
    cfg = load_config(TINY, ["validation_data.prompt=A dog is running."])
    validate_config(cfg)
    assert validation_prompts(cfg.validation_data) == ["A dog is running."]


def test_ignored_original_keys_still_load(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(Path(TINY).read_text() + (
        "trainable_modules: [attn1, attn2]\n"
        "extra_unet_params: {lr: 1e-5}\n"
        "train_text_encoder: false\n"
        "extra_train_data: [{dataset_types: [folder], train_data: {path: ./x}}]\n"))
    validate_config(load_config(str(path)))


def test_top_level_typo_suggests(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(Path(TINY).read_text() + "learnin_rate: 1e-4\n")
    with pytest.raises(UserError, match="unknown config key 'learnin_rate'.*did you mean 'learning_rate'"):
        load_config(str(path))


def test_nested_typo_suggests():
    with pytest.raises(UserError, match="did you mean 'train_data.n_sample_frames'"):
        load_config(TINY, ["train_data.n_sampl_frames=4"])


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(UserError, match="lora_rank.*'abc'.*int") as err:
        load_config(TINY, ["lora_rank=abc"])
    assert "\n" not in str(err.value)


def test_missing_file():
    with pytest.raises(UserError, match="not found"):
        load_config("configs/no_such_config.yaml")


def test_malformed_override():
    with pytest.raises(UserError, match="key=value"):
        load_config(TINY, ["learning_rate"])
    with pytest.raises(UserError, match="key=value"):
        parse_train_args(["--config", TINY, "learning_rate"])


def test_parse_train_args():
    assert parse_train_args(["--config", "x.yaml", "lora_rank=8", "train_data.fps=4"]) == (
        "x.yaml", ["lora_rank=8", "train_data.fps=4"])


@pytest.mark.parametrize("override, key", [
    ("lora_rank=0", "lora_rank"),
    ("learning_rate=0", "learning_rate"),
    ("validation_data.noise_prior=1.5", "validation_data.noise_prior"),
    ("validation_data.noise_prior=-0.1", "validation_data.noise_prior"),
    ("train_data.width=100", "train_data.width"),
    ("train_data.height=0", "train_data.height"),
    ("validation_data.width=-8", "validation_data.width"),
    ("validation_data.height=60", "validation_data.height"),
    ("train_data.n_sample_frames=0", "train_data.n_sample_frames"),
    ("max_train_steps=0", "max_train_steps"),
    ("checkpointing_steps=0", "checkpointing_steps"),
    ("validation_steps=0", "validation_steps"),
    ("gradient_accumulation_steps=0", "gradient_accumulation_steps"),
    ("mixed_precision=fp8", "mixed_precision"),
    ("dataset_types=[folder,videos]", "dataset_types[1]"),
    ("lr_scheduler=cosin", "lr_scheduler"),
    ("logger_type=tensorbored", "logger_type"),
    ("use_unet_lora=false", "use_unet_lora"),
])
def test_range_checks(override, key):
    cfg = load_config(TINY, [override])
    with pytest.raises(UserError, match=re.escape(f"'{key}'")):
        validate_config(cfg)


def test_dataset_type_error_lists_valid_ones():
    with pytest.raises(UserError, match="folder.*single_video.*image.*json"):
        validate_config(load_config(TINY, ["dataset_types=[videos]"]))


def test_mandatory_key(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text("output_dir: ./out\nuse_unet_lora: true\n")
    with pytest.raises(UserError, match="pretrained_model_path"):
        validate_config(load_config(str(path)))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_save_config_round_trips(path, tmp_path):
    cfg = load_config(str(path), ["learning_rate=2e-4"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, str(out))
    assert load_config(str(out)) == cfg


def test_bare_no_for_mixed_precision_means_no():
    cfg = load_config(str(Path(__file__).parent.parent / "configs" / "config_tiny_cpu.yaml"), ["mixed_precision=no"])
    assert cfg.mixed_precision == "no"
