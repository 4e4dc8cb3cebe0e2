"""Scoring a clip against what its prompt asked for, from the detector's reading.

* motion class (base motions): the straight-line fit of the centre over the frames gives the
  displacement from first to last frame; under STILL_MAX pixels it is "still", else the
  dominant axis and its sign name the direction;
* trajectory distance (any motion, new ones included): the mean over frames of the distance
  between the read track and the reference track (centre x, y and diameter), both taken
  relative to their own mean centre, so only the motion counts and not where it happens (the
  diameter, not the radius: a change of size moves both edges, as a shift moves one by as much);
* colour and shape accuracy: the read colour / shape equals the prompt's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from utils.toy_world import world
from utils.toy_world.detector import Reading, read_clip

STILL_MAX = world.TRAVEL / 3  # displacement (pixels) below which a clip counts as still
MISSING_DISTANCE = float(world.SIZE)  # the distance of a track with frames where no subject shows


@dataclass
class ClipScore:
    color: str | None
    shape: str | None
    motion: str | None  # the base motion class of the track
    color_ok: bool
    shape_ok: bool
    motion_ok: bool  # motion class == the wanted motion (always False for a new motion)
    trajectory_distance: float  # to the wanted motion's reference track, pixels

    def as_dict(self) -> dict:
        return asdict(self)


def displacement(track: np.ndarray) -> np.ndarray | None:
    """(dx, dy) from the first to the last frame of a least-squares line through the centres."""
    seen = ~np.isnan(track[:, 0])
    if seen.sum() < 2:
        return None
    frames = np.arange(len(track))[seen]
    slope = np.polyfit(frames, track[seen, :2], 1)[0]  # (2,): pixels per frame for x and y
    return slope * (len(track) - 1)


def motion_class(track: np.ndarray) -> str | None:
    """One of world.BASE_MOTIONS, or None when the subject shows in fewer than 2 frames."""
    move = displacement(track)
    if move is None:
        return None
    dx, dy = move
    if np.hypot(dx, dy) < STILL_MAX:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def trajectory_distance(track: np.ndarray, reference: np.ndarray) -> float:
    """Mean per-frame distance (pixels) of two (F, 3) tracks after removing each one's mean centre."""
    if np.isnan(track).any():
        return MISSING_DISTANCE
    a, b = track.astype(np.float64).copy(), reference.astype(np.float64).copy()
    a[:, :2] -= a[:, :2].mean(axis=0)
    b[:, :2] -= b[:, :2].mean(axis=0)
    a[:, 2] *= 2
    b[:, 2] *= 2
    return float(np.linalg.norm(a - b, axis=-1).mean())


def score_reading(reading: Reading, shape: str, color: str, motion: str) -> ClipScore:
    moved = motion_class(reading.track)
    reference = world.offsets(motion, len(reading.track))
    return ClipScore(
        color=reading.color,
        shape=reading.shape,
        motion=moved,
        color_ok=reading.color == color,
        shape_ok=reading.shape == shape,
        motion_ok=moved == motion,
        trajectory_distance=trajectory_distance(reading.track, reference),
    )


def score_clip(video: np.ndarray, shape: str, color: str, motion: str) -> ClipScore:
    """Score a uint8 (F, H, W, 3) clip against the prompt `caption(shape, color, motion)`."""
    return score_reading(read_clip(video), shape, color, motion)


def summarize(scores: list[ClipScore]) -> dict:
    """Accuracies (fractions) and the mean trajectory distance of a list of scores."""
    count = max(len(scores), 1)
    return {
        "clips": len(scores),
        "color_accuracy": sum(s.color_ok for s in scores) / count,
        "shape_accuracy": sum(s.shape_ok for s in scores) / count,
        "motion_accuracy": sum(s.motion_ok for s in scores) / count,
        "mean_trajectory_distance": float(np.mean([s.trajectory_distance for s in scores])) if scores else None,
    }
