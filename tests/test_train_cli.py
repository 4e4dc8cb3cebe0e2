"""MotionDirector_train.py end to end on the tiny model: layout, reload, resume, interrupt, NaN, errors."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import MotionDirector_train
from models.lora import SPATIAL, TEMPORAL, activate
from models.lora_io import load_adapter
from models.bases.zeroscope import load_unet
from utils.training.checkpoints import STATE_FILE
from utils.cli import run_cli
from utils.training.config import load_config
from utils.errors import UserError
from utils.io.video_io import video_info
from helpers import lora_targets

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "test_data" / "moving_square" / "moving_square.mp4"


def _overrides(model_dir, out_dir, **extra):
    values = {
        "pretrained_model_path": str(model_dir),
        "output_dir": str(out_dir),
        "train_data.single_video_path": str(CLIP),
        "train_data.n_sample_frames": 4,
        "train_data.frame_step": 4,  # 16 frames -> one 4-frame chunk: one clip, one spatial LoRA
        "validation_data.num_frames": 4,
        "validation_data.num_inference_steps": 2,
        "validation_data.noise_prior": 0.0,
        "max_train_steps": 4,
        "checkpointing_steps": 2,
        "validation_steps": 4,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def _train(model_dir, out_dir, **extra) -> Path:
    from utils.training.trainer import run

    cfg = load_config(str(REPO / "configs" / "config_tiny_cpu.yaml"), _overrides(model_dir, out_dir, **extra))
    return run(cfg)


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    argv = ["--config", str(REPO / "configs" / "config_tiny_cpu.yaml"),
            *_overrides(tiny_model_dir, out, **{"validation_data.noise_prior": 0.5})]
    assert run_cli(MotionDirector_train.main, argv) == 0
    (run_dir,) = out.glob("train_*")
    return run_dir


def test_run_writes_the_original_layout(trained_run):
    expected = [
        "config.yaml",
        "cached_latents/cached_0.pt",
        "checkpoint-2/spatial/lora/2_unet.safetensors",
        "checkpoint-2/temporal/lora/2_unet.safetensors",
        f"checkpoint-2/{STATE_FILE}",
        "checkpoint-4/spatial/lora/4_unet.safetensors",
        "checkpoint-4/temporal/lora/4_unet.safetensors",
        "spatial/lora/4_unet.safetensors",
        "temporal/lora/4_unet.safetensors",
        "samples/4_A ball is moving to the right.mp4",
    ]
    for rel in expected:
        assert (trained_run / rel).is_file(), rel
    assert not list(trained_run.glob(".checkpoint-*"))  # no temporary folders left
    cached = torch.load(trained_run / "cached_latents/cached_0.pt", weights_only=False)
    assert cached["latents"].shape == (4, 4, 8, 8)
    assert cached["inversion_noise"].shape == (4, 4, 8, 8)
    assert cached["text_prompt"] == "A square is moving to the right."
    assert not (trained_run / "temporal" / "export").exists()  # UNet3D has no stock LoRA loader to export for


def test_run_has_a_model_card(trained_run, tiny_model_dir):
    card = (trained_run / "README.md").read_text()
    front, body = card.split("---\n")[1:3]
    assert "library_name: diffusers" in front and "- motiondirector" in front and "- zeroscope" in front
    assert "base_model:" not in front  # a local folder is no hub model to link
    assert "* A square is moving to the right." in body and "4 training steps" in body
    assert "--model <the base model folder> --checkpoint_folder ." in body


def test_final_adapters_equal_last_checkpoint_and_were_trained(trained_run):
    for path in (SPATIAL, TEMPORAL):
        final = load_file(trained_run / path / "lora" / "4_unet.safetensors")
        checkpoint = load_file(trained_run / "checkpoint-4" / path / "lora" / "4_unet.safetensors")
        assert final.keys() == checkpoint.keys()
        assert all(torch.equal(final[k], checkpoint[k]) for k in final)
        ups = [v for k, v in final.items() if "lora_B" in k]
        assert all(v.abs().sum() > 0 for v in ups)  # up weights start at zero: all were trained


def test_trained_adapters_reload_and_change_the_output(trained_run, tiny_model_dir):
    torch.manual_seed(0)
    latents, ehs = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 77, 32)
    unet = load_unet(str(tiny_model_dir)).eval()
    with torch.no_grad():
        plain = unet(latents, 500, encoder_hidden_states=ehs).sample
        load_adapter(unet, trained_run / "temporal" / "lora", TEMPORAL, lora_targets(unet, TEMPORAL))
        load_adapter(unet, trained_run / "spatial" / "lora", SPATIAL, lora_targets(unet, SPATIAL))
        activate(unet, [SPATIAL, TEMPORAL])
        first = unet(latents, 500, encoder_hidden_states=ehs).sample
        again = load_unet(str(tiny_model_dir)).eval()
        load_adapter(again, trained_run / "checkpoint-4" / "temporal" / "lora", TEMPORAL, lora_targets(again, TEMPORAL))
        load_adapter(again, trained_run / "checkpoint-4" / "spatial" / "lora", SPATIAL, lora_targets(again, SPATIAL))
        activate(again, [SPATIAL, TEMPORAL])
        second = again(latents, 500, encoder_hidden_states=ehs).sample
    assert (first - plain).abs().max() > 1e-6
    assert torch.equal(first, second)


def test_resumed_run_ends_with_the_same_adapters(tiny_model_dir, tmp_path):
    full = _train(tiny_model_dir, tmp_path / "full", max_train_steps=4)
    half = _train(tiny_model_dir, tmp_path / "half", max_train_steps=2)
    resumed = _train(tiny_model_dir, tmp_path / "half", max_train_steps=4,
                     resume_from_checkpoint=str(half / "checkpoint-2"))
    assert resumed == half  # continues in the same run folder
    for path in (SPATIAL, TEMPORAL):
        a = load_file(full / path / "lora" / "4_unet.safetensors")
        b = load_file(resumed / path / "lora" / "4_unet.safetensors")
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    import utils.training.trainer as trainer
    from utils.training.step import StepLosses

    real_step, calls = trainer.train_step, []

    def failing_step(*args, **kwargs):
        calls.append(1)
        losses = real_step(*args, **kwargs)
        return StepLosses(losses.spatial, float("nan")) if len(calls) == 3 else losses

    monkeypatch.setattr(trainer, "train_step", failing_step)
    with pytest.raises(UserError, match="temporal loss became nan at step 3"):
        _train(tiny_model_dir, tmp_path, checkpointing_steps=2)
    (run_dir,) = tmp_path.glob("train_*")
    assert (run_dir / "checkpoint-2" / STATE_FILE).is_file()
    assert not (run_dir / "checkpoint-4").exists() and not (run_dir / "temporal").exists()


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tiny_model_dir, tmp_path):
    argv = [sys.executable, str(REPO / "MotionDirector_train.py"),
            "--config", str(REPO / "configs" / "config_tiny_cpu.yaml"),
            *_overrides(tiny_model_dir, tmp_path, max_train_steps=500, checkpointing_steps=3,
                        **{"validation_data.sample_preview": False})]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.glob("train_*/checkpoint-3")):
        time.sleep(0.2)
    assert list(tmp_path.glob("train_*/checkpoint-3")), "no first checkpoint"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGINT" in err
    (run_dir,) = tmp_path.glob("train_*")
    checkpoints = sorted(run_dir.glob("checkpoint-*"))
    assert len(checkpoints) >= 2  # checkpoint-3 and the one written on SIGINT
    for checkpoint in checkpoints:  # every checkpoint left behind is complete and loads
        state = torch.load(checkpoint / STATE_FILE, weights_only=False)
        assert state["step"] == int(checkpoint.name.split("-")[1])
        unet = load_unet(str(tiny_model_dir))
        load_adapter(unet, checkpoint / "temporal" / "lora", TEMPORAL, lora_targets(unet, TEMPORAL))
        load_adapter(unet, checkpoint / "spatial" / "lora", SPATIAL, lora_targets(unet, SPATIAL))
    assert not list(run_dir.glob(".checkpoint-*"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("learnin_rate=1e-4", "did you mean 'learning_rate'"),
        ("lora_rank=0", "lora_rank"),
        ("validation_data.noise_prior=1.5", "noise_prior"),
        ("train_data.width=60", "multiple of 8"),
        ("dataset_types=[movies]", "dataset_types"),
    ],
)
def test_config_errors_are_one_line(tiny_model_dir, tmp_path, capsys, override, message):
    argv = ["--config", str(REPO / "configs" / "config_tiny_cpu.yaml"), *_overrides(tiny_model_dir, tmp_path), override]
    assert run_cli(MotionDirector_train.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not list(tmp_path.glob("train_*"))  # nothing written before the config is valid


def test_missing_model_folder_is_one_line(tmp_path, capsys):
    argv = ["--config", str(REPO / "configs" / "config_tiny_cpu.yaml"),
            *_overrides(tmp_path / "nowhere", tmp_path / "out")]
    assert run_cli(MotionDirector_train.main, argv) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_image_config_trains_only_the_spatial_path_with_flips(tiny_model_dir, tmp_path, capsys):
    """An image is a 16-frame still clip, as in the original: its cached latents and inversion have
    16 frames, so a noise prior from an image run samples the default 16 frames."""
    from utils.training.trainer import run
    import MotionDirector_inference_multi as multi_cli

    overrides = [
        f"pretrained_model_path={tiny_model_dir}", f"output_dir={tmp_path}",
        "train_data.width=64", "train_data.height=64", "train_data.use_bucketing=false",
        f"train_data.image_dir={REPO / 'test_data' / 'images'}",
        "validation_data.width=64", "validation_data.height=64", "validation_data.noise_prior=0.5",
        "validation_data.num_inference_steps=2", "lora_rank=4", "max_train_steps=3",
        "checkpointing_steps=3", "validation_steps=3", "mixed_precision=no", "gradient_checkpointing=true",
        "random_hflip_img=1.0", "seed=1", "logger_type=none",
    ]
    run_dir = run(load_config(str(REPO / "configs" / "config_single_image.yaml"), overrides))
    assert (run_dir / "spatial" / "lora" / "3_unet.safetensors").is_file()
    assert not (run_dir / "temporal").exists()
    cached = torch.load(run_dir / "cached_latents" / "cached_0.pt", weights_only=False)
    assert cached["latents"].shape == (4, 16, 8, 8) and "pixel_values" in cached  # kept for flips
    assert cached["inversion_noise"].shape == (4, 16, 8, 8)
    assert torch.equal(cached["pixel_values"][0], cached["pixel_values"][15])
    (sample,) = (run_dir / "samples").glob("3_*.mp4")
    assert video_info(sample).num_frames == 16
    # the image run's noise prior at inference (no temporal run given): 16 frames by default
    argv = ["--model", tiny_model_dir, "-p", "A square.", "-slp", run_dir / "spatial" / "lora", "-np", "0.5",
            "-W", "64", "-H", "64", "-s", "1", "-d", "cpu", "-o", tmp_path / "videos", "-r", "3"]
    assert run_cli(multi_cli.main, [str(a) for a in argv]) == 0, capsys.readouterr().err
    assert video_info(tmp_path / "videos" / "A_square_3.mp4").num_frames == 16
    spatial = load_file(run_dir / "spatial" / "lora" / "3_unet.safetensors")
    assert all(v.abs().sum() > 0 for k, v in spatial.items() if "lora_B" in k)
