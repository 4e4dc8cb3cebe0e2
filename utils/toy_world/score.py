"""Scoring a clip against what its prompt asked for, from the detector's reading.

* motion class (the families): a track whose fitted circle it sweeps around by LOOP_SWEEP or more
  is a "loop"; otherwise the straight-line fit of the centre over the frames gives the
  displacement from first to last frame; under STILL_MAX pixels it is "still", else the
  dominant axis and its sign name the direction;
* path statistics (how a sample spreads over its family): the wiggle, the RMS distance of the
  centre from its straight-line fit; a loop's fitted radius and turning direction;
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
LOOP_SWEEP = 1.5 * np.pi  # a loop turns 7/8 of a turn (315 degrees); an arc of the drifts under 180
LOOP_MIN_RADIUS = 3.0
MISSING_DISTANCE = float(world.SIZE)  # the distance of a track with frames where no subject shows


@dataclass
class ClipScore:
    color: str | None
    shape: str | None
    motion: str | None  # the base motion class of the track
    color_ok: bool
    shape_ok: bool
    motion_ok: bool  # motion class == the wanted motion (a target motion: == its family)
    trajectory_distance: float  # to the wanted motion's reference track, pixels
    wiggle: float | None = None  # RMS distance from the straight-line fit, pixels
    loop_radius: float | None = None  # radius and sweep (radians, + clockwise) of the fitted circle
    loop_sweep: float | None = None
    path_distance: float | None = None  # trajectory_distance of the centre alone (the size left out), pixels
    size: float | None = None  # mean half-width of the subject's box where seen, pixels (drawn: world.RADIUS)

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


def line_residual(track: np.ndarray) -> np.ndarray | None:
    """(seen frames, 2): the centres minus their least-squares line over the frames."""
    seen = ~np.isnan(track[:, 0])
    if seen.sum() < 3:
        return None
    frames = np.arange(len(track))[seen]
    slope, intercept = np.polyfit(frames, track[seen, :2], 1)
    return track[seen, :2] - (np.outer(frames, slope) + intercept)


def wiggle(track: np.ndarray) -> float | None:
    """RMS distance (pixels) of the centre from its straight-line fit: 0 for a straight drift."""
    residual = line_residual(track)
    return None if residual is None else float(np.sqrt((residual ** 2).sum(axis=1).mean()))


def fit_circle(track: np.ndarray) -> tuple[float, float] | None:
    """(radius, signed sweep in radians; positive: clockwise on screen) of the circle fitted to
    the seen centres (algebraic least squares), or None for fewer than 3 centres."""
    points = track[~np.isnan(track[:, 0]), :2].astype(np.float64)
    if len(points) < 3:
        return None
    x, y = points[:, 0], points[:, 1]
    design = np.stack([x, y, np.ones_like(x)], axis=1)
    (a, b, c), *_ = np.linalg.lstsq(design, x ** 2 + y ** 2, rcond=None)
    cx, cy = a / 2, b / 2
    radius = float(np.sqrt(max(c + cx ** 2 + cy ** 2, 0.0)))
    angles = np.unwrap(np.arctan2(y - cy, x - cx))  # image y grows downwards: increasing = clockwise
    return radius, float(angles[-1] - angles[0])


def motion_class(track: np.ndarray) -> str | None:
    """One of world.FAMILIES, or None when the subject shows in fewer than 2 frames."""
    move = displacement(track)
    if move is None:
        return None
    circle = fit_circle(track)
    if circle is not None and circle[0] >= LOOP_MIN_RADIUS and abs(circle[1]) >= LOOP_SWEEP:
        return "loop"
    dx, dy = move
    if np.hypot(dx, dy) < STILL_MAX:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def trajectory_distance(track: np.ndarray, reference: np.ndarray, with_size: bool = True) -> float:
    """Mean per-frame distance (pixels) of two (F, 3) tracks after removing each one's mean centre;
    the diameter counts as a third coordinate unless `with_size` is False (the path alone)."""
    if np.isnan(track).any():
        return MISSING_DISTANCE
    a, b = track.astype(np.float64).copy(), reference.astype(np.float64).copy()
    a[:, :2] -= a[:, :2].mean(axis=0)
    b[:, :2] -= b[:, :2].mean(axis=0)
    a[:, 2] *= 2 if with_size else 0
    b[:, 2] *= 2 if with_size else 0
    return float(np.linalg.norm(a - b, axis=-1).mean())


def score_reading(reading: Reading, shape: str, color: str, motion: str) -> ClipScore:
    moved = motion_class(reading.track)
    reference = world.offsets(motion, len(reading.track))
    circle = fit_circle(reading.track)
    return ClipScore(
        color=reading.color,
        shape=reading.shape,
        motion=moved,
        color_ok=reading.color == color,
        shape_ok=reading.shape == shape,
        motion_ok=moved == world.TARGET_FAMILY.get(motion, motion),
        trajectory_distance=trajectory_distance(reading.track, reference),
        wiggle=wiggle(reading.track),
        loop_radius=None if circle is None else circle[0],
        loop_sweep=None if circle is None else circle[1],
        path_distance=trajectory_distance(reading.track, reference, with_size=False),
        size=None if np.isnan(reading.track[:, 2]).all() else float(np.nanmean(reading.track[:, 2])),
    )


def score_clip(video: np.ndarray, shape: str, color: str, motion: str) -> ClipScore:
    """Score a uint8 (F, H, W, 3) clip against the prompt `caption(shape, color, motion)`."""
    return score_reading(read_clip(video), shape, color, motion)


def path_spread(scores: list[ClipScore], motions: list[str]) -> dict:
    """How the clips of each family spread over it: for the drifts the wiggle's mean, standard
    deviation and share above 2 px; for loops the radius's mean and standard deviation and the
    share turning clockwise. Only clips whose motion class is their caption's count."""
    spread = {}
    for family in dict.fromkeys(motions):
        picked = [s for s, m in zip(scores, motions) if m == family and s.motion_ok]
        if family in world.DRIFTS and picked:
            values = np.array([s.wiggle for s in picked])
            spread[family] = {"clips": len(picked), "wiggle_mean": float(values.mean()),
                              "wiggle_std": float(values.std()), "wiggling": float((values > 2.0).mean())}
        elif family == "loop" and picked:
            radii = np.array([s.loop_radius for s in picked])
            spread[family] = {"clips": len(picked), "radius_mean": float(radii.mean()), "radius_std": float(radii.std()),
                              "clockwise": float(np.mean([s.loop_sweep > 0 for s in picked]))}
    return spread


def size_by_shape(scores: list[ClipScore]) -> dict:
    """Per shape, the mean and standard deviation of the half-width (pixels) of the clips drawn
    with their prompt's shape: whether a model draws a shape at the world's size."""
    sizes = {}
    for s in scores:
        if s.shape_ok and s.size is not None:
            sizes.setdefault(s.shape, []).append(s.size)
    return {shape: {"clips": len(v), "size_mean": float(np.mean(v)), "size_std": float(np.std(v))}
            for shape, v in sorted(sizes.items())}


def motion_by_family(scores: list[ClipScore], motions: list[str]) -> dict:
    """Per prompted family: how many of its clips the detector reads as that family."""
    return {family: {"right": sum(s.motion_ok for s, m in zip(scores, motions) if m == family),
                     "clips": motions.count(family)} for family in dict.fromkeys(motions)}


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
