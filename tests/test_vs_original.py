"""benchmarks/vs_original.py without the original: arguments, the set-up message, statistics, config, events."""

import importlib.util
import json
from pathlib import Path

import pytest

from utils.cli import run_cli
from utils.training.config import load_config, validate_config
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("vs_original", REPO / "benchmarks" / "vs_original.py")
vs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vs)


def test_defaults_and_bad_arguments():
    args = vs.parse_args([])
    assert args.seeds == [1, 2, 3, 4, 5] and args.steps == 60 and args.skip == 4
    assert vs.parse_args(["--seeds", "7", "8", "--steps", "10", "--skip", "0"]).seeds == [7, 8]
    for bad in (["--steps", "4"], ["--skip", "-1"], ["--steps", "0"], ["--seeds", "1", "1"]):
        with pytest.raises(UserError):
            vs.parse_args(bad)


def test_missing_oracle_is_one_clear_line_and_exit_2(tmp_path, capsys):
    argv = ["--oracle-dir", str(tmp_path / "oracle"), "--oracle-python", str(tmp_path / "python")]
    assert run_cli(vs.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: the original's harness is not set up")
    assert str(tmp_path / "python") in err and "setup.sh" in err


def test_benchmark_vs_original_delegates(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "benchmarks" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    with pytest.raises(UserError, match="harness is not set up"):
        benchmark.main(["--vs-original", "--oracle-dir", str(tmp_path), "--oracle-python", str(tmp_path / "py")])


def test_spread_on_known_numbers():
    s = vs.spread([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s["median"], s["min"], s["max"], s["q1"], s["q3"], s["n"]) == (3.0, 1.0, 5.0, 2.0, 4.0, 5)
    one = vs.spread([0.8])
    assert one["median"] == one["q1"] == one["q3"] == 0.8


def test_summarise_medians_ratios_and_loss_means():
    def run(steps, spatial, temporal):
        return {"step_s": steps, "spatial": spatial, "temporal": temporal}

    ours = [run([9, 9, 1, 1, 3], [None, 1.0, 3.0, None, 2.0], [4, 4, 4, 4, 4]),
            run([9, 9, 2, 2, 2], [1.0, 1.0, 1.0, 1.0, 1.0], [2, 2, 2, 2, 2])]
    original = [run([7, 7, 2, 2, 2], [1.0] * 5, [3] * 5), run([7, 7, 4, 5, 4], [1.0] * 5, [3] * 5)]
    s = vs.summarise(ours, original, skip=2)
    assert s["ours_s"] == [1, 2] and s["original_s"] == [2, 4]
    assert s["ratio_per_seed"] == [0.5, 0.5] and s["ratio"]["median"] == 0.5
    assert s["ratio_pooled_steps"] == 2 / 3.0  # median of (1, 1, 3, 2, 2, 2) / median of (2, 2, 2, 4, 5, 4)
    assert s["losses"]["ours"] == {"spatial": 11.0 / 8, "temporal": 3.0, "spatial_skipped": 2}  # (1+3+2+5*1)/8


def test_run_config_is_the_harness_run_config(original_md, tmp_path):
    cfg = vs.run_config(original_md / "reference.json", seed=3, steps=60, output_dir=tmp_path / "out")
    assert cfg["max_train_steps"] == cfg["checkpointing_steps"] == 60 and cfg["seed"] == 3
    assert cfg["validation_data"]["sample_preview"] is False and cfg["validation_data"]["noise_prior"] == 0
    assert cfg["lora_rank"] == 4 and cfg["mixed_precision"] == "no" and cfg["cache_latents"] is True
    assert cfg["gradient_checkpointing"] is False and cfg["train_data"]["n_sample_frames"] == 8
    assert Path(cfg["pretrained_model_path"], "model_index.json").is_file()
    assert Path(cfg["train_data"]["single_video_path"]).is_file()
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    validate_config(load_config(str(path)))  # our CLI accepts it as a config file


def test_step_time_is_read_from_the_tensorboard_events_of_a_2_step_run(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from utils.training.trainer import run

    overrides = [f"pretrained_model_path={tiny_model_dir}", f"output_dir={tmp_path}",
                 f"train_data.single_video_path={REPO / 'test_data/moving_square/moving_square.mp4'}",
                 "train_data.n_sample_frames=4", "train_data.frame_step=4", "validation_data.sample_preview=false",
                 "validation_data.noise_prior=0.0", "max_train_steps=2", "checkpointing_steps=2",
                 "logger_type=tensorboard"]
    run(load_config(str(REPO / "configs" / "config_tiny_cpu.yaml"), overrides))
    scalars = vs.read_scalars(vs._event_file(tmp_path))
    times = scalars["step_time_s"]
    assert [step for step, _ in times] == [1, 2] and all(0 < t < 60 for _, t in times)
    temporal = vs._by_step(scalars["loss_temporal"], 2)
    assert all(t is not None and t > 0 for t in temporal)
    spatial = vs._by_step(scalars.get("loss_spatial", []), 2)
    assert len(spatial) == 2
