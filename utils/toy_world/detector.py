"""Reading a toy-world clip back without any learned model: colour, shape, per-frame centre and size.

The background is whatever colour the frame's border has; the subject is every pixel far from
it. On generated clips (hard edges) the mask is exact; on sampled, blurry clips the threshold
is half of the strongest contrast in the frame, which cuts a blurred edge at its middle, where
the true edge lies.

* colour: the palette colour nearest to the subject's mean colour;
* shape: the shape whose template, fitted to the subject's bounding box, overlaps it best (IoU);
* size: half the bounding box's width (the radius the generator draws with); centre: the box's
  centre, except for a triangle, whose thin apex fades first: there the base line, which stays
  sharp, places it a radius above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.toy_world import world

MIN_CONTRAST = 40.0  # RGB distance from the background below which nothing is the subject
MIN_PIXELS = 4  # a frame with fewer subject pixels shows no subject


@dataclass
class Reading:
    color: str | None  # None: no subject found in any frame
    shape: str | None
    track: np.ndarray  # (F, 3): centre x, y and radius per frame; NaN where the frame shows no subject


def background_color(frame: np.ndarray) -> np.ndarray:
    """Median colour of the frame's one-pixel border."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def subject_mask(frame: np.ndarray) -> np.ndarray:
    """Boolean (H, W): the pixels that belong to the subject."""
    contrast = np.linalg.norm(frame.astype(np.float32) - background_color(frame), axis=-1)
    peak = contrast.max()
    if peak < MIN_CONTRAST:
        return np.zeros(contrast.shape, bool)
    return contrast >= max(MIN_CONTRAST, peak / 2)


def box_of(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """(cx, cy, half_w, half_h) of the mask's bounding box, pixel centres inclusive."""
    ys, xs = np.nonzero(mask)
    if len(xs) < MIN_PIXELS:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    return (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2


def classify_shape(mask: np.ndarray, box) -> tuple[str, float]:
    """The shape whose template in the mask's bounding box has the highest IoU with the mask, and that IoU."""
    cx, cy, hx, hy = box
    size = mask.shape[0]
    best, best_iou = world.SHAPES[0], -1.0
    for shape in world.SHAPES:
        # +0.5: the generator's shapes reach to within half a pixel beyond the outermost pixel centres
        template = world.shape_mask(shape, (cx, cy), (hx + 0.5, hy + 0.5), size)
        iou = (template & mask).sum() / max((template | mask).sum(), 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, float(best_iou)


def majority_shape(votes: list[tuple[str, float]]) -> str:
    """The shape most frames read; a tie goes to the shape with the larger summed IoU (the
    frames that fit it better), not to whatever order a set of names iterates in."""
    tally = {}
    for shape, iou in votes:
        count, total = tally.get(shape, (0, 0.0))
        tally[shape] = (count + 1, total + iou)
    return max(tally, key=tally.get)


def centre_and_radius(box, shape: str) -> tuple[float, float, float]:
    cx, cy, hx, hy = box
    radius = hx + 0.5  # pixel centres lie half a pixel inside the drawn edge
    if shape == "triangle":
        cy = cy + hy + 0.5 - radius  # the bottom edge is at centre + radius
    return cx, cy, radius


def nearest_color(rgb: np.ndarray) -> str:
    names = list(world.COLORS)
    palette = np.array([world.COLORS[n] for n in names], np.float32)
    return names[int(np.argmin(np.linalg.norm(palette - rgb, axis=-1)))]


def read_clip(video: np.ndarray) -> Reading:
    """Read a uint8 (F, H, W, 3) clip (the clock band is ignored)."""
    video = world.without_clock(video)
    track = np.full((len(video), 3), np.nan)
    colors, votes = [], []
    for k, frame in enumerate(video):
        mask = subject_mask(frame)
        box = box_of(mask)
        if box is None:
            continue
        votes.append(classify_shape(mask, box))
        track[k] = centre_and_radius(box, votes[-1][0])
        colors.append(frame[mask].astype(np.float32).mean(axis=0))
    if not colors:
        return Reading(None, None, track)
    return Reading(nearest_color(np.mean(colors, axis=0)), majority_shape(votes), track)
