"""MotionDirector on the toy world: learn a new motion from its reference clip, score new subjects.

    rows = run_experiment(base, motion="zigzag", train_seeds=[0], out_dir=...)

Training goes through the project's own `MotionDirector_train.py` (a subprocess, exactly as a user
runs it, with `configs/config_toy_world_single_video.yaml` and key=value overrides); sampling
loads the run's temporal LoRA with `utils.generate.prepare_model` and samples with the project's
sampler. New subjects differ from the reference clip's subject in both colour and shape, so a
reference colour or shape in a sample is leakage.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from utils.toy_world import world
from utils.toy_world.score import ClipScore, score_clip

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "config_toy_world_single_video.yaml"
REFERENCE_ROOT = REPO / "test_data" / "toy_world"
CLOSE_ENOUGH = 4.0  # a trajectory within this many pixels (mean per frame) counts as the motion


def reference_clip(motion: str) -> Path:
    clips = sorted((REFERENCE_ROOT / motion / "single").glob("*.mp4"))
    if not clips:
        raise FileNotFoundError(f"no reference clip for {motion!r} in {REFERENCE_ROOT} "
                                "(python -m utils.toy_world make-data test_data/toy_world --reference)")
    return clips[0]


def new_subjects(reference: tuple[str, str]) -> list[tuple[str, str]]:
    """(shape, colour) pairs sharing neither shape nor colour with the reference subject."""
    return [(s, c) for s in world.SHAPES for c in world.COLORS if s != reference[0] and c != reference[1]]


def train_motiondirector(base: Path, motion: str, seed: int, steps: int, out_dir: Path,
                         overrides: tuple[str, ...] = ()) -> tuple[Path, float]:
    """Run MotionDirector_train.py on the motion's reference clip; (run folder, seconds)."""
    clip = reference_clip(motion)
    caption = clip.with_suffix(".txt").read_text(encoding="utf8").strip()
    command = [sys.executable, "MotionDirector_train.py", "--config", str(CONFIG),
               f"pretrained_model_path={base}", f"output_dir={out_dir}", f"seed={seed}",
               f"max_train_steps={steps}", f"checkpointing_steps={steps}", f"validation_steps={steps}",
               "validation_data.sample_preview=False", f"train_data.single_video_path={clip}",
               f"train_data.single_video_prompt={caption}", *overrides]
    started = time.time()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return sorted(Path(out_dir).glob("train_*"))[-1], time.time() - started


def sample_subjects(base: Path, run: Path | None, motion: str, subjects, seeds, num_steps: int = 25,
                    guidance_scale: float = 4.0) -> tuple[list[tuple[tuple, np.ndarray]], float]:
    """Clips of every subject doing `motion` (with the run's temporal LoRA, or the bare base)."""
    from models.lora import TEMPORAL
    from utils.generate import LoraRequest, prepare_model
    from utils.toy_world.evaluate import sample_prompt

    loras = [LoraRequest(run / "temporal" / "lora", TEMPORAL, 1.0)] if run is not None else []
    components = prepare_model(str(base), loras, "cpu", torch.float32)
    started, clips = time.time(), []
    for shape, color in subjects:
        for seed in seeds:
            clip = sample_prompt(components, world.caption(shape, color, motion), seed, 1, num_steps,
                                 guidance_scale)[0]
            clips.append(((shape, color), clip))
    return clips, time.time() - started


def row_of(name: str, motion: str, reference: tuple[str, str], clips, train_s: float, sample_s: float) -> dict:
    scores: list[ClipScore] = [score_clip(clip, shape, color, motion) for (shape, color), clip in clips]
    leaked = [s.color == reference[1] or s.shape == reference[0] for s in scores]
    distances = np.array([s.trajectory_distance for s in scores])
    return {
        "row": name,
        "trajectory_distance": float(distances.mean()),
        "motion_hit_rate": float((distances < CLOSE_ENOUGH).mean()),
        "appearance_accuracy": float(np.mean([s.color_ok and s.shape_ok for s in scores])),
        "leakage": float(np.mean(leaked)),
        "train_s": round(train_s, 1),
        "sample_s": round(sample_s, 1),
        "clips": len(scores),
    }


def reference_subject(motion: str) -> tuple[str, str]:
    from utils.toy_world.evaluate import parse_caption

    shape, color, _ = parse_caption(reference_clip(motion).with_suffix(".txt").read_text(encoding="utf8"))
    return shape, color


def run_experiment(base: str | Path, motion: str, train_seeds, sample_seeds, steps: int,
                   out_dir: str | Path) -> list[dict]:
    """Rows for the base model and MotionDirector (one per training seed) on one new motion."""
    base, out_dir = Path(base).resolve(), Path(out_dir).resolve()
    reference = reference_subject(motion)
    subjects = new_subjects(reference)
    clips, sample_s = sample_subjects(base, None, motion, subjects, sample_seeds)
    rows = [row_of("base", motion, reference, clips, 0.0, sample_s)]
    for seed in train_seeds:
        run, train_s = train_motiondirector(base, motion, seed, steps, out_dir / f"md_seed{seed}")
        clips, sample_s = sample_subjects(base, run, motion, subjects, sample_seeds)
        rows.append(row_of(f"motiondirector (seed {seed})", motion, reference, clips, train_s, sample_s))
        logger.info("%s", rows[-1])
    return rows


def format_table(rows: list[dict]) -> str:
    keys = ["row", "trajectory_distance", "motion_hit_rate", "appearance_accuracy", "leakage", "train_s",
            "sample_s", "clips"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) and k not in ("train_s", "sample_s") else str(row[k])
                 for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
