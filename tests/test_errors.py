"""Bad training input: one `error:` line, exit code 2, nothing written."""

from pathlib import Path

import pytest

import MotionDirector_train
from utils.cli import run_cli
from utils.tools.synthetic import make_moving_shape_video

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "config_tiny_cpu.yaml")


def _train(capsys, model_dir, out_dir, *overrides):
    argv = ["--config", CONFIG, f"pretrained_model_path={model_dir}", f"output_dir={out_dir}", *overrides]
    code = run_cli(MotionDirector_train.main, argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_one_line(code, err, *fragments):
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_not_a_diffusers_folder(capsys, tmp_path):
    (tmp_path / "model" / "unet").mkdir(parents=True)
    code, err = _train(capsys, tmp_path / "model", tmp_path / "out")
    _assert_one_line(code, err, "not a diffusers pipeline folder", "model_index.json")
    (tmp_path / "model" / "model_index.json").write_text('{"_class_name": "TextToVideoSDPipeline"}')
    code, err = _train(capsys, tmp_path / "model", tmp_path / "out")
    _assert_one_line(code, err, "not a diffusers text-to-video folder", "vae/")
    (tmp_path / "model" / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    code, err = _train(capsys, tmp_path / "model", tmp_path / "out")
    _assert_one_line(code, err, "KandinskyPipeline, which no base loads", "TextToVideoSDPipeline")
    assert not (tmp_path / "out").exists()


def test_corrupt_video_names_the_file(capsys, tiny_model_dir, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video" * 50)
    code, err = _train(capsys, tiny_model_dir, tmp_path / "out", f"train_data.single_video_path={bad}")
    _assert_one_line(code, err, "broken.mp4")
    assert not (tmp_path / "out").exists()


def test_missing_video_names_the_file(capsys, tiny_model_dir, tmp_path):
    code, err = _train(capsys, tiny_model_dir, tmp_path / "out", f"train_data.single_video_path={tmp_path}/gone.mp4")
    _assert_one_line(code, err, "gone.mp4")


def test_empty_dataset_folder(capsys, tiny_model_dir, tmp_path):
    (tmp_path / "clips").mkdir()
    code, err = _train(capsys, tiny_model_dir, tmp_path / "out", "dataset_types=[folder]",
                       f"train_data.path={tmp_path / 'clips'}")
    _assert_one_line(code, err, "clips")


def test_unknown_dataset_type_lists_valid_ones(capsys, tiny_model_dir, tmp_path):
    code, err = _train(capsys, tiny_model_dir, tmp_path / "out", "dataset_types=[videos]")
    _assert_one_line(code, err, "dataset_types", "single_video")


def test_fp16_on_cpu(capsys, tiny_model_dir, tmp_path):
    code, err = _train(capsys, tiny_model_dir, tmp_path / "out", "mixed_precision=fp16")
    _assert_one_line(code, err, "fp16 needs a CUDA GPU", "mixed_precision=no")


def test_resume_from_missing_checkpoint(capsys, tiny_model_dir, tmp_path):
    code, err = _train(capsys, tiny_model_dir, tmp_path / "out", f"resume_from_checkpoint={tmp_path}/run/checkpoint-9")
    _assert_one_line(code, err, "resume_from_checkpoint", "checkpoint-9")


def test_missing_config_file(capsys, tmp_path):
    code = run_cli(MotionDirector_train.main, ["--config", str(tmp_path / "nope.yaml")])
    _assert_one_line(code, capsys.readouterr().err.strip(), "nope.yaml")


def test_wrong_type(capsys, tiny_model_dir, tmp_path):
    code, err = _train(capsys, tiny_model_dir, tmp_path / "out", "lora_rank=abc")
    _assert_one_line(code, err, "lora_rank", "abc")


@pytest.mark.parametrize("override, key", [("learning_rate=0", "learning_rate"),
                                           ("train_data.n_sample_frames=0", "n_sample_frames"),
                                           ("validation_data.height=100", "validation_data.height")])
def test_out_of_range_values(capsys, tiny_model_dir, tmp_path, override, key):
    code, err = _train(capsys, tiny_model_dir, tmp_path / "out", override)
    _assert_one_line(code, err, key)


def test_short_video_is_used_with_a_warning(caplog, tiny_model_dir, tmp_path):
    """Like the original, a clip shorter than n_sample_frames trains on the frames it has."""
    from utils.training.dataset import build_dataset
    from utils.training.config import load_config

    clip = make_moving_shape_video(tmp_path / "short.mp4", frames=3, size=64)
    cfg = load_config(CONFIG, [f"train_data.single_video_path={clip}", "train_data.n_sample_frames=8"])
    with caplog.at_level("WARNING"):
        dataset = build_dataset(cfg.train_data, ["single_video"])
    assert dataset[0]["pixel_values"].shape[0] == 3
    assert any("short" in r.message.lower() or "frames" in r.message for r in caplog.records)


def test_out_of_gpu_memory_gets_advice(capsys):
    import torch

    def main(argv):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    code = run_cli(main, [])
    _assert_one_line(code, capsys.readouterr().err.strip(), "out of GPU memory", "gradient_checkpointing")


def test_cuda_requested_without_cuda(capsys, tmp_path):
    import torch

    import MotionDirector_inference

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    (tmp_path / "run" / "temporal" / "lora").mkdir(parents=True)
    (tmp_path / "run" / "temporal" / "lora" / "1_unet.safetensors").write_bytes(b"")
    argv = ["-m", str(tmp_path), "-p", "x", "-cf", str(tmp_path / "run"), "-d", "cuda", "-o", str(tmp_path / "out")]
    code = run_cli(MotionDirector_inference.main, argv)
    _assert_one_line(code, capsys.readouterr().err.strip(), "CUDA is not available", "--device cpu")
