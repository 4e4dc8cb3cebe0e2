"""Data-parallel training and inference with `accelerate launch` on two CPU processes (gloo).

accelerate's `--cpu --num_processes 2` starts a single process unless an MPI hostfile is given,
so the processes are started the way `accelerate launch --multi_gpu` starts them on any machine
(torchrun); with CUDA hidden, each forms a gloo process group on the CPU.
"""

import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.lora import SPATIAL, TEMPORAL
from models.lora_io import load_adapter
from models.bases.zeroscope import load_unet
from utils.training.checkpoints import STATE_FILE
from utils.training.config import load_config
from utils.tools.synthetic import make_moving_shape_video
from helpers import lora_targets

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "config_tiny_cpu.yaml"
CLIP = REPO / "test_data" / "moving_square" / "moving_square.mp4"
LAUNCH_TIMEOUT_S = 300  # a deadlocked collective would otherwise wait for gloo's 30-minute timeout


def _can_launch() -> bool:
    return (
        importlib.util.find_spec("accelerate.commands.launch") is not None
        and torch.distributed.is_available()
        and torch.distributed.is_gloo_available()
    )


pytestmark = pytest.mark.skipif(not _can_launch(), reason="accelerate launch or torch.distributed (gloo) unavailable")

# Runs the real training CLI, then writes each process's view of its adapters, so the test can
# tell that two processes ran and ended with the same weights.
PROBE = """
import hashlib, json, os, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import MotionDirector_train
from utils.training import trainer
from utils.cli import run_cli

_train = trainer.TrainingLoop.train

def train_and_record(self, start_step):
    _train(self, start_step)
    digests = {{}}
    for name, params in self.adapters.params.items():
        h = hashlib.sha256()
        for p in params:
            h.update(p.detach().float().cpu().numpy().tobytes())
        digests[name] = h.hexdigest()
    record = {{"num_processes": self.acc.num_processes, "adapters": digests}}
    out = Path(os.environ["MD_PROBE_DIR"]) / f"rank{{self.acc.process_index}}.json"
    out.write_text(json.dumps(record))

trainer.TrainingLoop.train = train_and_record
sys.exit(run_cli(MotionDirector_train.main))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list, **env) -> subprocess.CompletedProcess:
    """`accelerate launch` two processes on the CPU; kills the whole group on a hang."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), *map(str, args)]
    full_env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", **env)
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"accelerate launch hung for {LAUNCH_TIMEOUT_S} s (a collective deadlock?):\n{out[-3000:]}")
    assert proc.returncode == 0, out[-4000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def _overrides(model_dir, out_dir, **extra) -> list[str]:
    values = {
        "pretrained_model_path": model_dir,
        "output_dir": out_dir,
        "train_data.single_video_path": CLIP,
        "train_data.n_sample_frames": 4,
        "train_data.frame_step": 4,  # one 4-frame chunk: one clip
        "validation_data.num_frames": 4,
        "validation_data.num_inference_steps": 2,
        "validation_data.noise_prior": 0.0,
        "validation_data.sample_preview": False,
        "max_train_steps": 4,
        "checkpointing_steps": 2,
        "validation_steps": 4,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def _adapters(root: Path, step: int) -> dict:
    return {str(f.relative_to(root)): load_file(f) for f in sorted(root.glob(f"*/lora*/{step}_unet.safetensors"))}


def _assert_close(a: dict, b: dict, tolerance: float) -> None:
    assert a.keys() == b.keys()
    for file in a:
        difference = max((a[file][k] - b[file][k]).abs().max().item() for k in a[file])
        assert difference < tolerance, f"{file} differs by {difference:.3g}"


def _logged_steps(logs: Path, tag: str) -> set[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for folder in sorted({p.parent for p in logs.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(folder)).Reload()
        if tag in events.Tags()["scalars"]:
            return {e.step for e in events.Scalars(tag)}
    raise AssertionError(f"no {tag} in the event files under {logs}")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_two_processes_draw_their_own_noise_and_resume_exactly(tiny_model_dir, tmp_path):
    """Process i draws from seed + i, so two processes on the same clip do not just repeat one
    process's step (their averaged gradient would then equal it: the 2-process run would end where
    the single-process run ends). Each process's RNG is checkpointed: resumed at step 4 with two
    processes, steps 5-8 end where the uninterrupted 2-process run ended."""
    from utils.training.trainer import run

    settings = {"max_train_steps": 8, "checkpointing_steps": 4, "validation_steps": 8}
    single = run(load_config(str(CONFIG), _overrides(tiny_model_dir, tmp_path / "single", **settings)))
    _launch(["MotionDirector_train.py", "--config", CONFIG, *_overrides(tiny_model_dir, tmp_path / "two", **settings)])
    (two,) = (tmp_path / "two").iterdir()
    expected = _adapters(two, 8)
    assert set(expected) == {"spatial/lora/8_unet.safetensors", "temporal/lora/8_unet.safetensors"}
    temporal = "temporal/lora/8_unet.safetensors"
    difference = max((expected[temporal][k] - _adapters(single, 8)[temporal][k]).abs().max().item()
                     for k in expected[temporal])
    assert difference > 1e-4, "two processes drew the same random numbers"
    state = torch.load(two / "checkpoint-4" / STATE_FILE, weights_only=False)
    assert len(state["rng_per_process"]) == 2
    before = _files(two)

    result = _launch(["MotionDirector_train.py", "--config", CONFIG,
                      *_overrides(tiny_model_dir, tmp_path / "two", resume_from_checkpoint=two / "checkpoint-4",
                                  **settings)])
    printed = {line.split("run folder: ")[1] for line in result.stdout.splitlines() if "run folder: " in line}
    assert printed == {str(two)}, result.stdout[-3000:]
    assert [p.name for p in (tmp_path / "two").iterdir()] == [two.name]  # resumed in place, no second run folder
    assert _files(two) == before  # the same files, rewritten, none added
    _assert_close(_adapters(two, 8), expected, 1e-6)
    assert torch.load(two / "checkpoint-8" / STATE_FILE, weights_only=False)["step"] == 8


def test_two_processes_share_one_run_and_stay_in_sync(tiny_model_dir, tmp_path):
    """Two different clips, one per process: one run folder, everything written once, and both
    processes end with identical adapters (every adapter's gradient is synchronised, and every
    process steps the LR schedulers of the clips any process trained on)."""
    clips = tmp_path / "clips"
    make_moving_shape_video(clips / "red_square.mp4", frames=4, size=64, fps=8, shape="square")
    make_moving_shape_video(clips / "blue_circle.mp4", frames=4, size=64, fps=8, shape="circle",
                            color=(0.1, 0.3, 0.9), hue=0.3)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(repo=str(REPO)))
    (tmp_path / "ranks").mkdir()
    out = tmp_path / "out"
    overrides = _overrides(
        tiny_model_dir, out, **{
            "dataset_types": "[folder]", "train_data.path": clips, "train_data.fallback_prompt": "'A shape moves.'",
            "single_spatial_lora": False, "max_train_steps": 3, "validation_steps": 3, "lr_scheduler": "linear",
            "validation_data.sample_preview": True,
        })
    _launch([probe, "--config", CONFIG, *overrides], MD_PROBE_DIR=str(tmp_path / "ranks"))

    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "ranks").iterdir()}
    assert sorted(records) == ["rank0.json", "rank1.json"], f"expected two processes, got {records}"
    assert all(r["num_processes"] == 2 for r in records.values())
    assert records["rank0.json"]["adapters"] == records["rank1.json"]["adapters"], "the processes diverged"
    assert len(records["rank0.json"]["adapters"]) == 3  # temporal + one spatial LoRA per clip

    (run_dir,) = out.iterdir()
    assert _files(run_dir) == sorted([
        "README.md",  # the model card, written once by the main process
        "cached_latents/cached_0.pt", "cached_latents/cached_1.pt",
        f"checkpoint-2/{STATE_FILE}",
        "checkpoint-2/spatial/lora/2_unet.safetensors", "checkpoint-2/spatial/lora_video1/2_unet.safetensors",
        "checkpoint-2/temporal/lora/2_unet.safetensors",
        "config.yaml",
        "samples/3_A ball is moving to the right.mp4",
        "spatial/lora/3_unet.safetensors", "spatial/lora_video1/3_unet.safetensors",
        "temporal/lora/3_unet.safetensors",
    ])
    unet = load_unet(str(tiny_model_dir))
    for folder, name in ((run_dir / "temporal/lora", TEMPORAL), (run_dir / "spatial/lora", SPATIAL),
                         (run_dir / "spatial/lora_video1", f"{SPATIAL}_1")):
        load_adapter(unet, folder, name, lora_targets(unet, name))
        ups = [t for k, t in load_file(next(folder.glob("*.safetensors"))).items() if "lora_B" in k]
        assert ups and all(t.abs().max() > 0 for t in ups), f"{folder} did not train (up weights still zero)"


def test_inference_splits_repeats_across_processes(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    _untrained_run(tiny_model_dir, run_dir)
    out = tmp_path / "videos"
    result = _launch(["MotionDirector_inference.py", "--model", tiny_model_dir, "--prompt", "A car is running.",
                      "--checkpoint_folder", run_dir, "--output_dir", out, "--repeat_num", 3, "--seed", 7,
                      "-W", 64, "-H", 64, "-T", 4, "-s", 1])
    assert sorted(p.name for p in out.iterdir()) == [f"A_car_is_running_{s}.mp4" for s in (7, 8, 9)]
    assert result.stdout.count("wrote ") == 3, result.stdout[-3000:]  # each video written by one process
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert len(digests) == 3


def _untrained_run(model_dir: Path, run_dir: Path) -> None:
    """A run folder with a temporal LoRA, without training: inference only needs the files."""
    from models.lora import add_adapter
    from models.lora_io import save_adapter

    unet = load_unet(str(model_dir))
    add_adapter(unet, TEMPORAL, lora_targets(unet, TEMPORAL), 4, 0.0)
    save_adapter(unet, TEMPORAL, run_dir / "temporal" / "lora" / "1_unet.safetensors")
