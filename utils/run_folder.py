"""The training run folder: its layout, for the trainer that writes it and the scripts that read it.

    train_<YYYY-MM-DDTHH-MM-SS>/
        README.md                              model card (base, prompt, how to load the LoRA)
        config.yaml                            resolved config
        cached_latents/cached_<i>.pt
        checkpoint-<step>/spatial/lora/<step>_unet.safetensors
        checkpoint-<step>/spatial/lora_video<i>/<step>_unet.safetensors   (one spatial LoRA per video, i >= 1)
        checkpoint-<step>/temporal/lora/<step>_unet.safetensors
        checkpoint-<step>/temporal/export/...  the temporal LoRA in the base's stock formats
        checkpoint-<step>/training_state.pt    optimisers, LR schedulers, RNG, step (for resume only)
        spatial/..., temporal/...              the final adapters (and exports), as in a checkpoint
        samples/<step>_<prompt>.mp4
        logs/                                  TensorBoard / wandb

Released MotionDirector weights put the motion under checkpoint-default/.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from models.bases.spec import TEMPORAL
from utils.errors import UserError

CONFIG_FILE = "config.yaml"
MODEL_CARD = "README.md"
STATE_FILE = "training_state.pt"
CACHE_DIR = "cached_latents"
SAMPLES_DIR = "samples"
LOGS_DIR = "logs"
EXPORT_DIR = "export"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_ANY_CHECKPOINT_RE = re.compile(r"^checkpoint-(.+)$")


# ----------------------------------------------------------------------------- writing


def new_run_dir(output_dir: str | Path) -> Path:
    """`output_dir/train_<stamp>/` with its samples/ folder; never one that exists already."""
    stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    run_dir = Path(output_dir) / f"train_{stamp}"
    suffix = 1
    while run_dir.exists():  # two runs started in the same second never share a folder
        run_dir = Path(output_dir) / f"train_{stamp}_{suffix}"
        suffix += 1
    (run_dir / SAMPLES_DIR).mkdir(parents=True)
    return run_dir


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step}"


def adapter_folder(root: Path, adapter_name: str, spatial_names: list[str]) -> Path:
    """`root/temporal/lora`, or the spatial LoRA's folder (root is a checkpoint or the run)."""
    if adapter_name == TEMPORAL:
        return Path(root) / "temporal" / "lora"
    index = spatial_names.index(adapter_name)
    return Path(root) / "spatial" / ("lora" if index == 0 else f"lora_video{index}")


def export_folder(root: Path) -> Path:
    return Path(root) / "temporal" / EXPORT_DIR


def adapter_file(folder: Path, step: int) -> Path:
    return Path(folder) / f"{step}_unet.safetensors"


# ----------------------------------------------------------------------------- reading


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{step: checkpoint-<step>/} of a run, in step order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {}
    found = {}
    for p in run_dir.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir():
            found[int(m[1])] = p
    return dict(sorted(found.items()))


def temporal_lora_folder(run: Path, index: str) -> Path:
    """`run/checkpoint-<index>/temporal/lora/`, or for 'default' the released or final adapter."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"checkpoint folder not found: {run} (give the training run folder, "
                        "the one holding checkpoint-<N>/)")
    if index == "default":
        for folder in (run / "checkpoint-default" / "temporal" / "lora", run / "temporal" / "lora"):
            if folder.is_dir():
                return folder
        raise UserError(f"{run} has neither checkpoint-default/temporal/lora/ nor temporal/lora/; "
                        f"{available_indices(run)}")
    if not index.isdigit():
        raise UserError(f"--checkpoint_index must be a number or 'default', got {index!r}")
    folder = checkpoint_dir(run, int(index)) / "temporal" / "lora"
    if not folder.is_dir():
        raise UserError(f"no checkpoint-{int(index)}/temporal/lora/ in {run}; {available_indices(run)}")
    return folder


def available_indices(run: Path) -> str:
    """A phrase listing the checkpoint indices with a temporal LoRA, for error messages."""
    indices = [m[1] for p in run.iterdir()
               if (m := _ANY_CHECKPOINT_RE.match(p.name)) and (p / "temporal" / "lora").is_dir()]
    indices.sort(key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0, i))
    if (run / "temporal" / "lora").is_dir() and "default" not in indices:
        indices.append("default")
    if not indices:
        return "it holds no checkpoint with a temporal LoRA (is it a training run folder?)"
    return f"existing checkpoint indices: {', '.join(indices)}"


def cache_of_lora(lora_folder: str | Path | None) -> Path | None:
    """cached_latents/ of the run that trained a LoRA folder or file (None when that run has none).

    It sits three levels up for run/checkpoint-<N>/<path>/lora/ and two for the final
    run/<path>/lora/. (The original took four dirnames, right only with a trailing slash.)
    """
    if not lora_folder:
        return None
    lora = Path(lora_folder).resolve()
    if lora.is_file():
        lora = lora.parent
    candidates = [lora.parents[i] / CACHE_DIR for i in (1, 2) if len(lora.parents) > i]
    return next((c for c in candidates if c.is_dir()), None)


def motion_folder(path: Path) -> Path:
    """The temporal LoRA folder a 'motion' names: a training run (its final adapters, else its
    latest checkpoint), a checkpoint-<N>/ folder, released weights (checkpoint-default/), or a
    .../temporal/lora/ folder itself."""
    checkpoints = list_checkpoints(path)
    candidates = [path / "checkpoint-default" / "temporal" / "lora", path / "temporal" / "lora", path / "lora"]
    if checkpoints:
        candidates.append(checkpoints[max(checkpoints)] / "temporal" / "lora")
    return next((c for c in candidates if c.is_dir()), path)


def run_of(path: Path) -> Path | None:
    """The training run folder that holds `path` (a run, checkpoint or LoRA folder), if any."""
    for candidate in (Path(path), *Path(path).parents):
        if (candidate / CONFIG_FILE).is_file() and (candidate / SAMPLES_DIR).is_dir():
            return candidate
    return None
