"""The run folder layout, crash-safe checkpoints and the state needed to resume.

    train_<YYYY-MM-DDTHH-MM-SS>/
        config.yaml                          resolved config
        cached_latents/cached_<i>.pt
        checkpoint-<step>/spatial/lora/<step>_unet.safetensors
        checkpoint-<step>/spatial/lora_video<i>/<step>_unet.safetensors   (one spatial LoRA per video, i >= 1)
        checkpoint-<step>/temporal/lora/<step>_unet.safetensors
        checkpoint-<step>/training_state.pt  optimisers, LR schedulers, RNG, step (for resume only)
        spatial/lora/..., temporal/lora/...  the final adapters
        samples/<step>_<prompt>.mp4

A checkpoint is written under a temporary name and renamed when complete, so a crash never
leaves a half-written `checkpoint-<step>`.
"""

import logging
import os
import random
import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from models.lora import TEMPORAL
from models.lora_io import save_adapter
from utils.errors import UserError

logger = logging.getLogger(__name__)
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.pt"


def new_run_dir(output_dir: str) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    run_dir = Path(output_dir) / f"train_{stamp}"
    suffix = 1
    while run_dir.exists():  # two runs started in the same second never share a folder
        run_dir = Path(output_dir) / f"train_{stamp}_{suffix}"
        suffix += 1
    (run_dir / "samples").mkdir(parents=True)
    return run_dir


def adapter_folder(root: Path, adapter_name: str, spatial_names: list[str]) -> Path:
    if adapter_name == TEMPORAL:
        return root / "temporal" / "lora"
    index = spatial_names.index(adapter_name)
    return root / "spatial" / ("lora" if index == 0 else f"lora_video{index}")


def write_adapters(root: Path, step: int, unet, spatial_names: list[str], temporal: bool) -> None:
    names = list(spatial_names) + ([TEMPORAL] if temporal else [])
    for name in names:
        save_adapter(unet, name, adapter_folder(root, name, spatial_names) / f"{step}_unet.safetensors")


def save_checkpoint(run_dir: Path, step: int, unet, spatial_names, temporal: bool, state: dict) -> Path:
    """Write checkpoint-<step>/ atomically: build it under a temporary name, then rename."""
    final = Path(run_dir) / f"checkpoint-{step}"
    tmp = Path(run_dir) / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_adapters(tmp, step, unet, spatial_names, temporal)
    torch.save(state, tmp / STATE_FILE)
    if final.exists():  # the same step again after a resume: swap, never leave neither
        old = Path(run_dir) / f".checkpoint-{step}.old"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    return final


def save_final(run_dir: Path, step: int, unet, spatial_names, temporal: bool) -> None:
    write_adapters(Path(run_dir), step, unet, spatial_names, temporal)


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {}
    found = {}
    for p in run_dir.iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_dir():
            found[int(m[1])] = p
    return dict(sorted(found.items()))


def resolve_resume(value: str, output_dir: str) -> Path:
    """`<run>/checkpoint-N`, a run folder (its latest checkpoint), or `latest` (newest run's latest)."""
    if value == "latest":
        runs = sorted(Path(output_dir).glob("train_*"), key=lambda p: p.stat().st_mtime)
        runs = [r for r in runs if list_checkpoints(r)]
        if not runs:
            raise UserError(f"resume_from_checkpoint: latest, but no run with checkpoints in {output_dir}")
        value = str(runs[-1])
    path = Path(value)
    if _CHECKPOINT_RE.match(path.name) and (path / STATE_FILE).is_file():
        return path
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[max(checkpoints)]
    raise UserError(
        f"resume_from_checkpoint: {value} is not a checkpoint-<step> folder with {STATE_FILE} "
        "nor a run folder with checkpoints"
    )


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
