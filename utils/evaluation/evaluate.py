"""Scoring a set of generated videos: every metric for every video, with a progress bar."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from utils.evaluation.clip_scores import ClipScorer
from utils.evaluation.inputs import read_video
from utils.evaluation.motion_fidelity import MotionReference
from utils.evaluation.pickscore import PickScorer

logger = logging.getLogger(__name__)


def score_videos(videos: list[Path], prompts: list[str], clip: ClipScorer, pickscore: PickScorer | None = None,
                 reference: MotionReference | None = None) -> list[dict]:
    """One row per video: its path, prompt and each metric (None when not computed)."""
    rows = []
    for video, prompt in tqdm(list(zip(videos, prompts)), desc="scoring videos", unit="video"):
        frames = read_video(video)
        rows.append({
            "video": str(video),
            "prompt": prompt,
            "text_alignment": clip.text_alignment(frames, prompt),
            "temporal_consistency": clip.temporal_consistency(frames),
            "pickscore": pickscore.score(frames, prompt) if pickscore else None,
            "motion_fidelity": reference.score(frames) if reference else None,
        })
        logger.debug("%s: %s", video.name, rows[-1])
    return rows
