"""MotionDirector on the toy world: learn a new motion from reference clips, score new subjects.

    report = run_experiment(base, motions=["zigzag"], modes=["single"], train_seeds=[0, 1, 2], ...)

For each new motion and each mode (`single`: one reference clip; `multi`: three clips of different
subjects) it trains, with the project's own `MotionDirector_train.py` (a subprocess, exactly as a
user runs it, `configs/config_toy_world_single_video.yaml` plus key=value overrides), the variants
of `VARIANTS` once per training seed, then samples new subjects doing the motion with the run's
temporal LoRA (and, for MotionDirector on a single clip, with the noise prior) and scores them
with the detector. It samples the reference subjects too, with their own captions: a LoRA that
moves them but not new subjects has learned the motion bound to its subject. The base model (no
LoRA) is sampled once per motion: it has no training seed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from utils.toy_world import world
from utils.toy_world.score import ClipScore, score_clip

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class WorldSetup:
    """What the experiment needs of a base's world: its clip length, its reference clips (written
    by `make-data ROOT --reference --frames N`) and the training config its runs start from."""

    frames: int
    reference_root: Path
    config: Path


UNET_SETUP = WorldSetup(world.FRAMES, REPO / "test_data" / "toy_world",
                        REPO / "configs" / "config_toy_world_single_video.yaml")
DIT_SETUP = WorldSetup(world.DIT_FRAMES, REPO / "test_data" / "toy_world_dit",
                       REPO / "configs" / "config_toy_world_dit_single_video.yaml")


def setup_for(base: str | Path, reference_root: str | Path | None = None) -> WorldSetup:
    """The setup of a base folder: the DiT one for a Wan pipeline, else the UNet one; with
    `reference_root`, its reference clips come from there."""
    from models.bases import base_for_model

    setup = DIT_SETUP if world.clip_frames(base_for_model(str(base)).name) == world.DIT_FRAMES else UNET_SETUP
    return replace(setup, reference_root=Path(reference_root).resolve()) if reference_root else setup


CLOSE_ENOUGH = 4.0  # a trajectory within this many pixels (mean per frame) counts as the motion
MODES = ("single", "multi")
# Training variants: config overrides on top of the toy config. "coupled" is the paper's coupled
# tuning: the temporal LoRA alone, trained on whole clips with the plain diffusion loss.
VARIANTS = {
    "motiondirector": (),
    "coupled": ("train_spatial_lora=False", "appearance_debiased_loss=False"),
    "no_debias": ("appearance_debiased_loss=False",),
}
NOISE_PRIORS = (0.3, 0.5)  # sampled for MotionDirector on a single clip


@dataclass(frozen=True)
class Sampling:
    seeds: tuple[int, ...] = (0, 1)
    num_steps: int = 25
    guidance_scale: float = 4.0
    subjects: int = 6  # new subjects per motion


def reference_clips(motion: str, mode: str = "single", setup: WorldSetup = UNET_SETUP) -> list[Path]:
    folder = setup.reference_root / motion / mode
    clips = sorted(folder.glob("*.mp4"))
    if not clips:
        raise FileNotFoundError(f"no reference clip for {motion!r} in {folder} (python -m utils.toy_world "
                                f"make-data {setup.reference_root} --reference --frames {setup.frames})")
    return clips


def reference_clip(motion: str, setup: WorldSetup = UNET_SETUP) -> Path:
    return reference_clips(motion, "single", setup)[0]


def reference_subjects(motion: str, mode: str = "single", setup: WorldSetup = UNET_SETUP) -> list[tuple[str, str]]:
    from utils.toy_world.evaluate import parse_caption

    return [parse_caption(c.with_suffix(".txt").read_text(encoding="utf8"))[:2]
            for c in reference_clips(motion, mode, setup)]


def new_subjects(references: list[tuple[str, str]], count: int | None = None) -> list[tuple[str, str]]:
    """(shape, colour) pairs that are none of the reference subjects; with one reference, pairs
    that share neither its shape nor its colour. Spread over shapes and colours."""
    if len(references) == 1:
        (ref_shape, ref_color), = references
        pairs = [(s, c) for c in world.COLORS for s in world.SHAPES if s != ref_shape and c != ref_color]
    else:
        pairs = [(s, c) for c in world.COLORS for s in world.SHAPES if (s, c) not in references]
    return pairs[:count] if count else pairs


def leaked(score: ClipScore, prompt_subject: tuple[str, str], references: list[tuple[str, str]]) -> bool:
    """The clip shows a reference subject (its exact shape and colour) instead of the prompt's.

    Only the exact pair counts: with three references covering every shape and three of four
    colours, counting any reference colour or shape made every appearance error a leak.
    """
    drawn = (score.shape, score.color)
    return drawn != tuple(prompt_subject) and drawn in {tuple(r) for r in references}


def data_overrides(motion: str, mode: str, setup: WorldSetup = UNET_SETUP) -> list[str]:
    if mode == "single":
        clip = reference_clip(motion, setup)
        caption = clip.with_suffix(".txt").read_text(encoding="utf8").strip()
        return [f"train_data.single_video_path={clip}", f"train_data.single_video_prompt={caption}"]
    return ["dataset_types=[folder]", f"train_data.path={setup.reference_root / motion / mode}",
            "single_spatial_lora=False"]


def train_motiondirector(base: Path, motion: str, seed: int, steps: int, out_dir: Path,
                         overrides: tuple[str, ...] = (), mode: str = "single",
                         setup: WorldSetup | None = None) -> tuple[Path, float]:
    """Run MotionDirector_train.py on the motion's reference clip(s) (`setup`'s, by default the
    base's bundled ones); (run folder, seconds).

    A finished run of the same command in `out_dir` (its `experiment_run.json` says which) is
    reused with its recorded seconds: training is seeded, so an interrupted or re-scored
    experiment need not train again.
    """
    setup = setup or setup_for(base)
    command = [sys.executable, "MotionDirector_train.py", "--config", str(setup.config),
               f"pretrained_model_path={base}", f"output_dir={out_dir}", f"seed={seed}",
               f"max_train_steps={steps}", f"checkpointing_steps={steps}", f"validation_steps={steps}",
               "validation_data.sample_preview=False", *data_overrides(motion, mode, setup), *overrides]
    record = Path(out_dir) / "experiment_run.json"
    if record.is_file():
        done = json.loads(record.read_text(encoding="utf8"))
        if done["command"] == command[1:] and (Path(done["run"]) / "temporal" / "lora").is_dir():
            return Path(done["run"]), done["seconds"]
    started = time.time()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    run, seconds = sorted(Path(out_dir).glob("train_*"))[-1], time.time() - started
    record.write_text(json.dumps({"command": command[1:], "run": str(run), "seconds": seconds}), encoding="utf8")
    return run, seconds


def sampling_model(base: Path, run: Path | None, noise_prior: float = 0.0, lora_scale: float = 1.0):
    """(components, noise prior) to sample with: the base with the run's temporal LoRA at
    `lora_scale` (MotionDirector_inference.py's --lora_scale), or bare."""
    from models.lora import TEMPORAL
    from utils.inference.generate import LoraRequest, prepare_model
    from utils.inference.noise_prior import NoisePrior

    loras = [LoraRequest(run / "temporal" / "lora", TEMPORAL, lora_scale)] if run is not None else []
    components = prepare_model(str(base), loras, "cpu", torch.float32)
    prior = NoisePrior.from_folder(run / "cached_latents", "train with cache_latents") if noise_prior > 0 else None
    return components, prior


def sample_subjects(model, motion: str, subjects, sampling: Sampling, noise_prior: float = 0.0,
                    phrase: str | None = None) -> tuple[list[tuple[tuple, int, np.ndarray]], float]:
    """((shape, colour), seed, clip) of every subject doing `motion`, sampled with `model`
    (`sampling_model`) and the noise prior; and the sampling seconds. The prompt is the motion's
    caption, or "a <colour> <shape> <phrase>"."""
    from utils.inference.generate import GenerationSettings, inverted_for, sample_video

    components, prior = model
    started, clips = time.time(), []
    for shape, color in subjects:
        prompt = world.caption(shape, color, motion) if phrase is None else f"a {color} {shape} {phrase}"
        settings = GenerationSettings(prompt=prompt, width=world.SIZE, height=world.SIZE,
                                      num_frames=world.clip_frames(components.base.name), num_steps=sampling.num_steps,
                                      guidance_scale=sampling.guidance_scale, noise_prior=noise_prior)
        for seed in sampling.seeds:
            inverted = inverted_for(seed, settings, prior, components)
            clips.append(((shape, color), seed, sample_video(components, settings, seed, inverted)[0].numpy()))
    return clips, time.time() - started


def scored_distances(clips, motion: str) -> tuple[list[ClipScore], np.ndarray, np.ndarray]:
    """Each clip's score, and its trajectory and path distances (pixels) to `motion`."""
    scores = [score_clip(clip, shape, color, motion) for (shape, color), _, clip in clips]
    return scores, np.array([s.trajectory_distance for s in scores]), np.array([s.path_distance for s in scores])


def per_clip(clips, distances: np.ndarray, paths: np.ndarray, prefix: str = "") -> dict:
    """Each clip's subject, trajectory distance and path distance (the size left out): what the
    means hide, e.g. one shape that never hits."""
    return {f"{prefix}clip_subjects": [world.subject_name(shape, color) for (shape, color), _, _ in clips],
            f"{prefix}distances": [round(float(d), 3) for d in distances],
            f"{prefix}path_distances": [round(float(d), 3) for d in paths]}


def reference_subject_scores(clips, motion: str) -> dict:
    """The reference subjects' own samples: mean distance, hit rate and the per-clip figures."""
    _, distances, paths = scored_distances(clips, motion)
    return {"reference_subject_distance": float(distances.mean()),
            "reference_subject_hit_rate": float((distances < CLOSE_ENOUGH).mean()),
            "reference_subject_path_hit_rate": float((paths < CLOSE_ENOUGH).mean()),
            **per_clip(clips, distances, paths, "reference_subject_")}


def score_row(name: str, motion: str, references, reference_frames: np.ndarray, clips,
              train_s: float, sample_s: float) -> dict:
    from utils.evaluation.motion_fidelity import motion_fidelity

    scores, distances, paths = scored_distances(clips, motion)
    reference_frames = world.without_clocks(reference_frames)
    return {
        "row": name,
        "trajectory_distance": float(distances.mean()),
        "motion_hit_rate": float((distances < CLOSE_ENOUGH).mean()),
        "motion_fidelity": float(np.mean([motion_fidelity(world.without_clocks(clip), reference_frames)
                                          for _, _, clip in clips])),
        "path_hit_rate": float((paths < CLOSE_ENOUGH).mean()),  # the path alone within CLOSE_ENOUGH
        "appearance_accuracy": float(np.mean([s.color_ok and s.shape_ok for s in scores])),
        "leakage": float(np.mean([leaked(s, subject, references) for s, (subject, _, _) in zip(scores, clips)])),
        "train_s": round(train_s, 1),
        "sample_s": round(sample_s, 1),
        "clips": len(scores),
        **per_clip(clips, distances, paths),
    }


def scaled_row(variant: str, lora_scale: float) -> str:
    """The row name of a variant's runs sampled with the temporal LoRA at `lora_scale`."""
    return f"{variant}_ls{lora_scale:g}"


DEFAULT_MOTIONS = ("zigzag", "circling", "growing")  # two family members and a held-out motion


def run_experiment(base: str | Path, out_dir: str | Path, motions=DEFAULT_MOTIONS, modes=MODES,
                   train_seeds=(0, 1, 2, 3, 4), steps: int = 600, sampling: Sampling = Sampling(),
                   variants=tuple(VARIANTS), keep_clips: bool = True, overrides: tuple[str, ...] = (),
                   lora_scales: tuple[float, ...] = (), setup: WorldSetup | None = None) -> list[dict]:
    """Every row for every motion, mode and training seed (the base once per motion and mode).

    `overrides` (config key=value, e.g. "lora_rank=32") go to every training run, after the variant's.
    Each of `lora_scales` adds a row per trained run, "<variant>_ls<scale>": the same LoRA sampled at
    that scale (the noise-prior rows stay at scale 1). `setup` (default: the base's, `setup_for`)
    says where the reference clips are.

    Each row dict carries motion, mode, seed (None for the base), the scores and, when
    `keep_clips`, the sampled clips under "samples" (for pictures; not JSON-serialisable). Each row
    is also appended to `out_dir`/rows.jsonl as it is scored (`python -m utils.toy_world table` reads
    it), so that an interrupted experiment keeps what it measured.
    """
    from utils.evaluation.inputs import read_video

    base, out_dir = Path(base).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    setup, rows = setup or setup_for(base), []
    for motion in motions:
        reference_frames = read_video(reference_clip(motion, setup))
        for mode in modes:
            references = reference_subjects(motion, mode, setup)
            subjects = new_subjects(references, sampling.subjects)

            def add(name, seed, run, train_s, noise_prior=0.0, lora_scale=1.0):
                model = sampling_model(base, run, noise_prior, lora_scale)
                clips, sample_s = sample_subjects(model, motion, subjects, sampling, noise_prior)
                row = score_row(name, motion, references, reference_frames, clips, train_s, sample_s)
                # the reference subjects themselves: does the LoRA carry the motion at least for them?
                own, _ = sample_subjects(model, motion, references, sampling, noise_prior)
                row.update(motion=motion, mode=mode, seed=seed, **reference_subject_scores(own, motion),
                           **({"samples": clips} if keep_clips else {}))
                rows.append(row)
                with (out_dir / "rows.jsonl").open("a", encoding="utf8") as file:  # survives an interruption
                    file.write(json.dumps({k: v for k, v in row.items() if k != "samples"}) + "\n")
                logger.info("%s %s %s seed %s: distance %.2f px (reference subjects %.2f px), fidelity %.3f, "
                            "appearance %.2f, leakage %.2f", motion, mode, name, seed, row["trajectory_distance"],
                            row["reference_subject_distance"], row["motion_fidelity"], row["appearance_accuracy"],
                            row["leakage"])

            add("base", None, None, 0.0)
            for seed in train_seeds:  # seed by seed: an interrupted run still has whole pairs
                for variant in variants:
                    run, train_s = train_motiondirector(base, motion, seed, steps,
                                                        out_dir / motion / mode / f"{variant}_seed{seed}",
                                                        (*VARIANTS[variant], *overrides), mode, setup)
                    add(variant, seed, run, train_s)
                    for scale in lora_scales:
                        add(scaled_row(variant, scale), seed, run, train_s, lora_scale=scale)
                    if variant == "motiondirector" and mode == "single":
                        for prior in NOISE_PRIORS:
                            add(f"motiondirector_np{prior}", seed, run, train_s, prior)
    return rows


def frame_strips(rows: list[dict], motion: str, names=("base", "motiondirector", "coupled"), mode: str = "single",
                 scale: int = 2, setup: WorldSetup = UNET_SETUP) -> np.ndarray:
    """uint8 picture: the reference clip's frames on top, then for each row name the first sample
    (same subject and seed) of the first training seed; one frame per column."""
    from utils.evaluation.inputs import read_video
    from utils.toy_world.compare import strip

    clips = [read_video(reference_clip(motion, setup))]
    for name in names:
        row = next((r for r in rows if r["row"] == name and r["motion"] == motion and r["mode"] == mode), None)
        if row is not None and row.get("samples"):
            clips.append(row["samples"][0][2])
    return strip(clips, scale)
