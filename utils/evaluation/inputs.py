"""What to score: the generated videos, the prompt of each, and the reference clips for motion.

Prompts come from `--prompts` (a text file, one prompt a line, or a JSON object mapping file
names to prompts) or from the names the inference scripts write: `<prompt>_<seed>.mp4`, with
`_b<j>` for batch items and `_<n>` when a file of that name existed (utils/inference/generate.py).
"""

from __future__ import annotations

import glob
import json
import logging
import random
import re
from pathlib import Path

import numpy as np

from utils.errors import UserError
from utils.inference.generate import output_stem
from utils.io.prompts_file import read_prompts_file
from utils.io.video_io import read_frames, video_info

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv")
# prompt, then _<seed>, then the optional _b<j> (batch item) and _<n> (name already taken)
_GENERATED_NAME = re.compile(r"^(?P<prompt>.+?)_(?P<seed>\d+)(?:_b\d+)?(?:_\d+)?$")


# ----------------------------------------------------------------------------- videos


def find_videos(spec: str, flag: str = "--videos") -> list[Path]:
    """Sorted video files of a folder, a glob pattern or one file (GIFs beside mp4s are skipped)."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    else:
        files = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
    if not files:
        where = f"in folder {path}" if path.is_dir() else f"matching {spec!r}"
        raise UserError(f"{flag}: no videos found {where} (give a folder of .mp4 files, a glob or a file)")
    return sorted(files)


def read_video(path: Path) -> np.ndarray:
    """All frames, uint8 (F, H, W, 3); a broken file is a UserError (utils/io/video_io.py)."""
    return read_frames(path, range(video_info(path).num_frames))


# ----------------------------------------------------------------------------- prompts


def prompt_from_name(path: Path) -> str:
    """The prompt in an inference file name: `A_car_is_running_1234.mp4` -> "A car is running".

    The inference scripts drop commas and full stops from the name; pass --prompts for exact text.
    """
    match = _GENERATED_NAME.match(path.stem)
    return (match["prompt"] if match else path.stem).replace("_", " ")


def video_prompts(videos: list[Path], prompts_path: str | None) -> list[str]:
    """One prompt per video, from `prompts_path` (txt or json) or else from the file names."""
    if not prompts_path:
        return [prompt_from_name(v) for v in videos]
    if Path(prompts_path).suffix.lower() == ".json":
        return _prompts_from_json(videos, Path(prompts_path))
    return _prompts_from_lines(videos, read_prompts_file(prompts_path, "--prompts"), prompts_path)


def _prompts_from_lines(videos: list[Path], prompts: list[str], source: str) -> list[str]:
    """Match each video to the prompt its name was made from (the --prompts_file of the
    generation); failing that, a file with one line per video pairs them in sorted order."""
    by_stem = {output_stem(p): p for p in prompts}
    matched = [_longest_stem_match(v.stem, by_stem) for v in videos]
    if all(m is not None for m in matched):
        return matched
    if len(prompts) == len(videos):
        return prompts
    unmatched = next(v.name for v, m in zip(videos, matched) if m is None)
    raise UserError(f"--prompts: {source} has {len(prompts)} prompts for {len(videos)} videos and none of "
                    f"them made the name {unmatched}; give one prompt per video (in sorted file order) "
                    "or the prompts file the videos were generated from")


def _longest_stem_match(stem: str, by_stem: dict[str, str]) -> str | None:
    candidates = [s for s in by_stem if stem.startswith(s + "_") and _GENERATED_NAME.match("x" + stem[len(s):])]
    return by_stem[max(candidates, key=len)] if candidates else None


def _prompts_from_json(videos: list[Path], path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"--prompts: file {path} not found")
    try:
        mapping = json.loads(path.read_text(encoding="utf8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--prompts: {path} is not valid JSON ({err})") from None
    if not isinstance(mapping, dict):
        raise UserError(f"--prompts: {path} must hold an object mapping video file names to prompts")
    prompts = []
    for video in videos:
        prompt = next((mapping[k] for k in (str(video), video.name, video.stem) if k in mapping), None)
        if not isinstance(prompt, str):
            raise UserError(f"--prompts: {path} has no prompt for {video.name} (keys are file names)")
        prompts.append(prompt)
    return prompts


# ----------------------------------------------------------------------------- reference clips


def reference_clips(specs: list[str]) -> list[np.ndarray]:
    """uint8 clips from video files, folders, globs or training run folders (their training clips)."""
    clips = []
    for spec in specs:
        if Path(spec).is_dir() and (Path(spec) / "config.yaml").is_file():
            clips += training_clips(Path(spec))
        else:
            clips += [read_video(v) for v in find_videos(spec, "--reference")]
    return clips


def training_clips(run: Path) -> list[np.ndarray]:
    """The clips a run trained on (image datasets left out: they carry no motion).

    The pixels in the run's latent cache when it kept them (the original's caches always do, ours
    with random_hflip_img > 0): exactly the frames trained. Otherwise its data pipeline, re-run as
    training ran it: through its config.yaml (its data paths must still be valid from here) with
    its seed, from which the folder dataset drew each clip's start frame.
    """
    from utils.training.config import load_config

    config = load_config(str(run / "config.yaml"))
    video_types = [t for t in config.dataset_types if t != "image"]
    if not video_types:
        raise UserError(f"--reference: the run {run} trained on images only; give reference clips instead")
    clips = _cached_pixels(run, config)
    source = "cached pixel values"
    if clips is None:
        clips, source = _redrawn_clips(run, config, video_types), f"its data pipeline with seed {config.seed}"
    logger.info("reference: %d training clips of %s (%s)", len(clips), run, source)
    return clips


def _cached_pixels(run: Path, config) -> list[np.ndarray] | None:
    """The video clips' pixel values in the run's latent cache, or None when it has none."""
    from utils.run_folder import CACHE_DIR
    from utils.training.latent_cache import load_cached

    folder = Path(config.cached_latent_dir) if config.cached_latent_dir else run / CACHE_DIR
    if not folder.is_dir() or not any(folder.glob("cached_*.pt")):
        return None
    items = load_cached(folder)
    if not all("pixel_values" in item for item in items):
        return None
    return [_to_uint8(item["pixel_values"]) for item in items if item.get("dataset") != "image"]


def _redrawn_clips(run: Path, config, video_types: list[str]) -> list[np.ndarray]:
    """The dataset's clips with the draws training made: the trainer seeds Python's RNG with the
    run's seed before it reads the clips in order, and nothing draws from it in between."""
    from utils.training.dataset import build_dataset

    if config.seed is None and "folder" in video_types:
        logger.warning("--reference: %s trained without a seed, so the folder clips' start frames cannot be "
                       "drawn again; using seed 0 (keep the run's cached_latents with random_hflip_img > 0, or "
                       "set seed, for the frames that were trained)", run)
    state = random.getstate()
    random.seed(0 if config.seed is None else config.seed)
    try:
        dataset = build_dataset(config.train_data, video_types)
        return [_to_uint8(dataset[i]["pixel_values"]) for i in range(len(dataset))]
    except UserError as err:
        raise UserError(f"--reference: cannot read the training clips of {run} ({err}); run from the "
                        "folder training ran in, or give the clips themselves") from None
    finally:
        random.setstate(state)


def _to_uint8(pixel_values) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> uint8 (F, H, W, 3)."""
    return ((pixel_values.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
