"""Experiment tracking: TensorBoard events in <run>/logs with the documented tags, none when off."""

import importlib.util
from pathlib import Path

import pytest

from utils.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "config_tiny_cpu.yaml"
CLIP = REPO / "test_data" / "moving_square" / "moving_square.mp4"
EXPECTED_TAGS = {"loss_spatial", "loss_temporal", "lr_temporal", "lr_spatial", "step_time_s"}


def _train(model_dir, out_dir, **extra) -> Path:
    from utils.training.trainer import run

    values = {
        "pretrained_model_path": model_dir,
        "output_dir": out_dir,
        "train_data.single_video_path": CLIP,
        "train_data.n_sample_frames": 4,
        "train_data.frame_step": 4,
        "validation_data.num_frames": 4,
        "validation_data.num_inference_steps": 2,
        "validation_data.noise_prior": 0.0,
        "max_train_steps": 3,
        "checkpointing_steps": 3,
        "validation_steps": 3,
        **extra,
    }
    return run(load_config(str(CONFIG), [f"{k}={v}" for k, v in values.items()]))


def _event_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("events.out.tfevents.*"))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_records_losses_learning_rates_and_step_time(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _train(tiny_model_dir, tmp_path, logger_type="tensorboard")
    files = _event_files(run_dir)
    assert files and all(f.is_relative_to(run_dir / "logs") for f in files), files
    scalars = {}
    for folder in {f.parent for f in files}:
        events = EventAccumulator(str(folder)).Reload()
        scalars.update({tag: events.Scalars(tag) for tag in events.Tags()["scalars"]})
    assert EXPECTED_TAGS <= set(scalars), sorted(scalars)
    assert [e.step for e in scalars["loss_temporal"]] == [1, 2, 3]
    assert [e.step for e in scalars["step_time_s"]] == [1, 2, 3]
    assert all(e.value > 0 for e in scalars["step_time_s"] + scalars["loss_temporal"])
    assert all(abs(e.value - 5e-4) < 1e-9 for e in scalars["lr_temporal"])  # constant schedule
    assert (run_dir / "samples" / "3_A ball is moving to the right.mp4").is_file()  # the validation video


def test_logger_none_writes_no_event_file(tiny_model_dir, tmp_path):
    run_dir = _train(tiny_model_dir, tmp_path, logger_type="none", **{"validation_data.sample_preview": False})
    assert (run_dir / "temporal" / "lora" / "3_unet.safetensors").is_file()
    assert _event_files(run_dir) == [] and not (run_dir / "logs").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (optional)")
def test_wandb_offline_run_is_kept_in_the_run_folder(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # a wandb/ folder in the working directory would be the bug
    run_dir = _train(tiny_model_dir, tmp_path / "out", logger_type="wandb",
                     **{"validation_data.sample_preview": False})
    assert list((run_dir / "logs").rglob("run-*.wandb")), sorted(map(str, run_dir.rglob("*")))
    assert not (tmp_path / "wandb").exists()
