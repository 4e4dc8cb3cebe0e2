"""Crash-safe checkpoints and the state needed to resume (the folder layout is utils/run_folder.py).

A checkpoint is written under a temporary name and renamed when complete, so a crash never
leaves a half-written `checkpoint-<step>`. Each checkpoint and the final adapters also get the
temporal LoRA in the base's stock formats (`temporal/export/`).
"""

import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from models.lora import TEMPORAL
from models.lora_io import adapter_state_dict, save_adapter
from utils.errors import UserError
from utils.io.torch_files import LEGACY_NUMPY, load_plain
from utils.run_folder import (
    CHECKPOINT_RE,
    STATE_FILE,
    adapter_file,
    adapter_folder,
    checkpoint_dir,
    export_folder,
    list_checkpoints,
)

logger = logging.getLogger(__name__)


def write_adapters(root: Path, step: int, base, model, spatial_names: list[str], temporal: bool) -> None:
    """Every adapter as our safetensors file under `root`, and the temporal one's exports."""
    names = list(spatial_names) + ([TEMPORAL] if temporal else [])
    for name in names:
        save_adapter(model, name, adapter_file(adapter_folder(root, name, spatial_names), step))
    if temporal and base.export_files:
        base.export(adapter_state_dict(model, TEMPORAL), TEMPORAL, export_folder(root))


def save_checkpoint(run_dir: Path, step: int, base, model, spatial_names, temporal: bool, state: dict) -> Path:
    """Write checkpoint-<step>/ atomically: build it under a temporary name, then rename."""
    final = checkpoint_dir(run_dir, step)
    tmp = Path(run_dir) / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_adapters(tmp, step, base, model, spatial_names, temporal)
    torch.save(state, tmp / STATE_FILE)
    if final.exists():  # the same step again after a resume: swap, never leave neither
        old = Path(run_dir) / f".checkpoint-{step}.old"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def load_training_state(checkpoint: Path) -> dict:
    """`training_state.pt` of a checkpoint, read without running code (tensors and plain values;
    numpy's RNG array of older checkpoints is allowed)."""
    return load_plain(Path(checkpoint) / STATE_FILE, "training state", "resume from a checkpoint this project "
                      "wrote, or start without resume_from_checkpoint", allow=LEGACY_NUMPY)


def save_final(run_dir: Path, step: int, base, model, spatial_names, temporal: bool) -> None:
    write_adapters(Path(run_dir), step, base, model, spatial_names, temporal)


def resolve_resume(value: str, output_dir: str) -> Path:
    """`<run>/checkpoint-N`, a run folder (its latest checkpoint), or `latest` (newest run's latest)."""
    if value == "latest":
        runs = sorted(Path(output_dir).glob("train_*"), key=lambda p: p.stat().st_mtime)
        runs = [r for r in runs if list_checkpoints(r)]
        if not runs:
            raise UserError(f"resume_from_checkpoint: latest, but no run with checkpoints in {output_dir}")
        value = str(runs[-1])
    path = Path(value)
    if CHECKPOINT_RE.match(path.name) and (path / STATE_FILE).is_file():
        return path
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[max(checkpoints)]
    raise UserError(
        f"resume_from_checkpoint: {value} is not a checkpoint-<step> folder with {STATE_FILE} "
        "nor a run folder with checkpoints"
    )


def rng_state() -> dict:
    """Every RNG the run draws from, as tensors, tuples, lists and numbers: a training state
    then loads with `weights_only=True` (numpy's ndarray of keys would need an allow-list)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"kind": kind, "keys": keys.tolist(), "position": position, "has_gauss": has_gauss,
                   "cached_gaussian": cached_gaussian}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], np.array(numpy_state["keys"], dtype=np.uint32), numpy_state["position"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)  # a tuple: a state written before the lists
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
