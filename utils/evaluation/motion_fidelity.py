"""Motion fidelity: does a generated clip move like the reference, whatever it looks like?

The score follows the "motion fidelity score" of Yatim et al., "Space-Time Diffusion Features
for Zero-Shot Text-Driven Motion Transfer" (CVPR 2024). Tracks are followed through both clips,
each track becomes its sequence of per-frame displacement vectors, and two tracks correlate by

    corr(a, b) = mean over frames t of cos(d_a(t), d_b(t))

    fidelity = 1/2 * ( mean over generated tracks of the max corr with a reference track
                     + mean over reference tracks of the max corr with a generated track )  [x 100]

Where we differ, and why:
* Tracks come from dense optical flow (OpenCV's DIS flow, Kroeger et al. ECCV 2016, "medium"
  preset), chained frame to frame from a regular grid of points: the paper used CoTracker, a
  learned tracker we do not ship. (DIS keeps textureless moving regions together far better
  than Farneback flow, which tore the tracks of a flat-coloured moving shape apart.)
* Both clips are first brought to one scale (grey, the shorter side `size` pixels, the aspect
  ratio kept, so a diagonal motion keeps its angle whatever the two clips' shapes) and one frame
  count (the shorter clip's, frames taken evenly over each clip), so displacements are comparable.
  Track start points lie on a square grid, `grid` along the shorter side.
* Near-zero motion is explicit, since the cosine of a zero vector is undefined: a displacement
  shorter than `min_motion` pixels is "still". The mean in corr runs over the frames where at
  least one of the two tracks moves; there a still displacement against a moving one counts 0.
  (Counting still-with-still as agreement would let any two mostly-still tracks match.)
  Tracks that barely move (mean displacement < `min_motion`, e.g. static background) are left
  out, so the score is about what moves: a clip with no moving track scores 0 against a moving
  reference (and 100 against a still one).
Range: -100 (opposite motion everywhere) to 100 (the same motion).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)

SIZE = 256  # the shorter side of the frames the flow sees
GRID = 32  # track start points along the shorter side (square grid)
MIN_MOTION = 0.5  # pixels per frame at SIZE: below this a displacement counts as still


def common_frame_count(*clips: np.ndarray) -> int:
    return min(len(clip) for clip in clips)


def even_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """`count` frames taken evenly from the first to the last."""
    if len(frames) == count:
        return frames
    return frames[np.linspace(0, len(frames) - 1, count).round().astype(int)]


def scaled_size(height: int, width: int, size: int = SIZE) -> tuple[int, int]:
    """(width, height) with the shorter side `size` and the aspect ratio kept."""
    scale = size / min(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def track_displacements(frames: np.ndarray, size: int = SIZE, grid: int = GRID) -> np.ndarray:
    """float32 (N, F-1, 2): per-frame displacements (x, y) of tracked points, in pixels of the
    frames scaled to a shorter side of `size`.

    Each point starts on a square grid (`grid` points along the shorter side) in the first frame
    and moves by the (bilinearly sampled) optical flow at its current position, frame after frame.
    """
    width, height = scaled_size(*frames.shape[1:3], size)
    grey = [cv2.resize(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), (width, height),
                       interpolation=cv2.INTER_AREA) for f in frames]
    step = min(width, height) / grid
    xs = np.arange(max(1, round(width / step)), dtype=np.float32) * step + step / 2
    ys = np.arange(max(1, round(height / step)), dtype=np.float32) * step + step / 2
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    corner = np.array([width - 1, height - 1], np.float32)
    displacements = np.zeros((len(points), max(len(frames) - 1, 0), 2), np.float32)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for t in range(len(frames) - 1):
        displacements[:, t] = _sample(flow.calc(grey[t], grey[t + 1], None), points)
        points = np.clip(points + displacements[:, t], 0, corner)
    return displacements


def _sample(flow: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) flow at float positions (bilinear)."""
    return cv2.remap(flow, points[:, :1], points[:, 1:], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[:, 0]


def moving_tracks(displacements: np.ndarray, min_motion: float = MIN_MOTION) -> np.ndarray:
    """The tracks whose mean displacement length is at least `min_motion`."""
    if displacements.shape[1] == 0:
        return displacements
    return displacements[np.linalg.norm(displacements, axis=-1).mean(axis=1) >= min_motion]


def track_correlation(a: np.ndarray, b: np.ndarray, min_motion: float = MIN_MOTION) -> np.ndarray:
    """(N, M): mean cosine of the displacements of tracks a[n] and b[m] over the frames where
    either moves; a still frame (< min_motion) against a moving one counts 0, two still ones are
    left out (two tracks that never move agree: 1)."""
    def directions(d):
        length = np.linalg.norm(d, axis=-1, keepdims=True)
        moving = length[..., 0] >= min_motion
        return np.where(moving[..., None], d / np.maximum(length, 1e-12), 0.0), moving.astype(np.float64)

    (unit_a, moving_a), (unit_b, moving_b) = directions(a), directions(b)
    cosines = np.einsum("ntc,mtc->nm", unit_a, unit_b)
    both_still = np.einsum("nt,mt->nm", 1 - moving_a, 1 - moving_b)
    either_moving = a.shape[1] - both_still
    return np.where(either_moving > 0, cosines / np.maximum(either_moving, 1), 1.0)


def fidelity_of_displacements(generated: np.ndarray, reference: np.ndarray,
                              min_motion: float = MIN_MOTION) -> float:
    """The symmetric motion fidelity (x 100) of two sets of track displacements of one frame count."""
    generated, reference = moving_tracks(generated, min_motion), moving_tracks(reference, min_motion)
    if len(generated) == 0 or len(reference) == 0:
        return 100.0 if len(generated) == len(reference) else 0.0
    corr = track_correlation(generated, reference, min_motion)
    return float(50.0 * (corr.max(axis=1).mean() + corr.max(axis=0).mean()))


def motion_fidelity(generated: np.ndarray, reference: np.ndarray, size: int = SIZE, grid: int = GRID) -> float:
    """Motion fidelity (x 100) of a generated clip against one reference clip, both uint8 (F, H, W, 3)."""
    count = common_frame_count(generated, reference)
    return fidelity_of_displacements(track_displacements(even_frames(generated, count), size, grid),
                                     track_displacements(even_frames(reference, count), size, grid))


class MotionReference:
    """Reference clips whose tracks are computed once per frame count; a video's score is its
    best match among them (a multi-video motion is shown by any one of its clips).

    A reference clip of fewer than 2 frames (a single video's short last chunk) has no motion:
    it is left out with a warning, and the others score.
    """

    def __init__(self, clips: list[np.ndarray], size: int = SIZE, grid: int = GRID):
        short = [i for i, clip in enumerate(clips) if len(clip) < 2]
        if short:
            logger.warning("motion fidelity: reference clip(s) %s have fewer than 2 frames (no motion); left out",
                           ", ".join(str(i) for i in short))
        self.clips = [clip for clip in clips if len(clip) >= 2]
        self.size, self.grid = size, grid
        self._tracks: dict[tuple[int, int], np.ndarray] = {}

    def score(self, frames: np.ndarray) -> float | None:
        """Best motion fidelity of `frames` over the reference clips; None when `frames` has fewer
        than 2 frames or no reference clip has 2."""
        if len(frames) < 2 or not self.clips:
            return None
        generated: dict[int, np.ndarray] = {}  # tracks of `frames` per common frame count
        scores = []
        for i, clip in enumerate(self.clips):
            count = common_frame_count(frames, clip)
            if (i, count) not in self._tracks:
                self._tracks[i, count] = track_displacements(even_frames(clip, count), self.size, self.grid)
            if count not in generated:
                generated[count] = track_displacements(even_frames(frames, count), self.size, self.grid)
            scores.append(fidelity_of_displacements(generated[count], self._tracks[i, count]))
        return max(scores)
