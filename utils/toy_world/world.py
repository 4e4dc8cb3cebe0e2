"""The toy world: one coloured shape moving on a plain grey background, with its caption.

The background brightens over the clip and a clock bar grows along the top edge (see
BACKGROUND_RAMP and CLOCK_ROWS): a frame's place in the clip is visible in every frame.

Every clip is 8 frames of 64x64 (the smallest size a scale-8 VAE and a two-level UNet3D still
resolve: 8x8 latents). It is fixed by its `ClipSpec` (shape, colour, motion, start point), so the
same spec gives the same pixels on every machine; `sample_specs(n, seed)` draws specs from a seed.

Motion families (v2, `FAMILIES`): each pretraining caption's motion covers a family of paths, a
`Member` says which one. "moving left/right/up/down" is any drift of TRAVEL pixels that way, straight
or with a perpendicular wiggle (sine or zig-zag of random amplitude, period and phase) or an arc;
"moving in a circle" is a loop of random radius, start and direction; "standing still" stands.
The evaluation's targets (`NEW_MOTIONS`) are particular members that no caption singles out (the
zig-zag: one amplitude and period of "moving right"; circling: one radius and start of "moving in
a circle"), and two held-out motions no pretraining clip shows (growing, bouncing). The v1 world
(`BASE_MOTIONS`, straight lines only) is the family's straight members.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 64
FRAMES = 8
# Wan's VAE reads 4k + 1 frames (a lone first frame, then groups of 4): the DiT base's clips are 9
# frames, the same world with the clock bar growing SIZE / 9 pixels a frame.
DIT_FRAMES = 9
FPS = 8
RADIUS = 11.0  # half the side of the subject's bounding box, in pixels (~3 latent cells wide)
TRAVEL = 24.0  # how far a base motion moves the subject over the clip, in pixels
BACKGROUND = (128, 128, 128)
# A clock: a white bar along the top edge, CLOCK_ROWS high, that grows by SIZE / frames pixels a
# frame. Denoising it needs the frame's place in the clip, which a UNet3D can only learn through
# its temporal convs (its temporal attention is blind to frame order): without it the base model
# stayed ~97% time-reversal equivariant and could not tell "moving left" from "moving right"
# (docs/toy_world.md). The detector and the scores ignore the band.
CLOCK_ROWS = 3
CLOCK_COLOR = (255, 255, 255)
# A second clock, readable at high noise: the grey background brightens by 2 x BACKGROUND_RAMP
# levels from the first frame to the last. The bar alone is a few latent cells, buried in noise
# where generation decides the layout, and the base model then drew the right axis but a random
# sign ("moving left" as often right as left; docs/toy_world.md).
BACKGROUND_RAMP = 40
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
BASE_MOTIONS = ("left", "right", "up", "down", "still")  # v1: straight lines only
DRIFTS = ("left", "right", "up", "down")
FAMILIES = (*DRIFTS, "loop", "still")  # v2's pretraining captions, each a family of paths
NEW_MOTIONS = ("circling", "zigzag", "bouncing", "growing")  # the evaluation's target motions
# The family a target motion belongs to; the others are held out of pretraining entirely.
TARGET_FAMILY = {"zigzag": "right", "circling": "loop"}
HELD_OUT = ("bouncing", "growing")
# A target motion is prompted with its family's phrase: the caption names the family, not the member.
MOTION_PHRASES = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "loop": "moving in a circle",
    "still": "standing still",
    "circling": "moving in a circle",
    "zigzag": "moving right",
    "bouncing": "bouncing",
    "growing": "growing",
}
# A word no pretraining caption holds (the tokenizer knows it): the `new_word` probe's trigger.
NEW_WORD_PHRASE = "zigzagging"
# unit step of the centre per base motion, image coordinates (y grows downwards)
_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
CIRCLE_AMPLITUDE = 11.0
ZIGZAG_AMPLITUDE = 7.0
ZIGZAG_PERIOD = 2  # frames: the height flips every frame
# The families' ranges (pixels; periods in frames). The targets lie inside them.
WIGGLE_KINDS = ("straight", "sine", "zigzag", "arc")
WIGGLE_AMPLITUDE = (2.0, 8.0)
WIGGLE_PERIODS = (2, 3, 4, 6, 8)
ARC_AMPLITUDE = (3.0, 10.0)
LOOP_RADIUS = (5.0, 12.0)
BOUNCE_HEIGHT = 20.0
GROW_RADII = (5.0, 14.0)
# Pretraining clips start within this many pixels of the centred start. With starts anywhere, every
# motion fills the frame alike frame by frame, so the motion word barely lowers the denoising loss
# and the base model learned to ignore it (docs/toy_world.md); near the centre, the word says
# where the subject is in each frame.
START_SPREAD = 6.0


@dataclass(frozen=True)
class Member:
    """Which path of its family a clip takes (see `offsets`).

    Drifts: `kind` straight, sine, zigzag (a triangle wave) or arc; `amplitude` the perpendicular
    excursion in pixels (an arc's is signed), `period` in frames, `phase` a fraction of a period.
    Loops: `amplitude` the radius, `phase` the start angle in turns (0: top), `clockwise` on screen.
    """

    kind: str = "straight"
    amplitude: float = 0.0
    period: float = ZIGZAG_PERIOD
    phase: float = 0.0
    clockwise: bool = True

    @property
    def tag(self) -> str:
        if self.kind == "straight":
            return ""
        turn = "cw" if self.clockwise else "ccw"
        return f"_{self.kind}{self.amplitude:.1f}p{self.period:g}f{self.phase:.2f}" + (f"{turn}" if self.kind == "loop" else "")


@dataclass(frozen=True)
class ClipSpec:
    shape: str
    color: str
    motion: str
    start: tuple[float, float] = (SIZE / 2, SIZE / 2)  # where the trajectory's anchor lies, see offsets()
    member: Member | None = None  # None: the motion's own path (targets, v1's straight lines)

    @property
    def caption(self) -> str:
        return caption(self.shape, self.color, self.motion)

    @property
    def stem(self) -> str:
        x, y = (int(round(v)) for v in self.start)
        tag = self.member.tag if self.member else ""
        return f"{self.color}_{self.shape}_{self.motion}{tag}_{x:02d}_{y:02d}"


def clip_frames(base_name: str) -> int:
    """The clip length of a base model of the world, by its base's name (`VideoBase.name`)."""
    return DIT_FRAMES if base_name == "wan" else FRAMES


def subject_name(shape: str, color: str) -> str:
    """"green circle": how scores, tables and the response readings name a subject."""
    return f"{color} {shape}"


def caption(shape: str, color: str, motion: str) -> str:
    return f"a {subject_name(shape, color)} {MOTION_PHRASES[motion]}"


# The targets that are family members, as members (their paths are their family's with these).
TARGET_MEMBERS = {
    "zigzag": Member("zigzag", ZIGZAG_AMPLITUDE, ZIGZAG_PERIOD, 0.0),  # right, the height flipping every frame
    "circling": Member("loop", CIRCLE_AMPLITUDE, phase=0.0, clockwise=True),  # from the top, 7/8 of a turn
}


def triangle_wave(u: np.ndarray) -> np.ndarray:
    """-1 at whole u, +1 half-way between: a zig-zag of period 1."""
    return 1.0 - 2.0 * np.abs(2.0 * np.mod(u, 1.0) - 1.0)


def wiggle(member: Member, frames: int) -> np.ndarray:
    """(frames,): a drift's perpendicular excursion in pixels."""
    k = np.arange(frames)
    if member.kind == "straight":
        return np.zeros(frames)
    if member.kind == "sine":
        return member.amplitude * np.sin(2 * np.pi * (k / member.period + member.phase))
    if member.kind == "zigzag":
        return member.amplitude * triangle_wave(k / member.period + member.phase)
    if member.kind == "arc":
        return member.amplitude * np.sin(np.pi * k / max(frames - 1, 1))
    raise ValueError(f"unknown drift member kind {member.kind!r}; use one of {WIGGLE_KINDS}")


def loop(member: Member, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A loop's (dx, dy) from its centre: one turn per FRAMES frames, so first and last frame differ."""
    turn = 1.0 if member.clockwise else -1.0
    angle = 2 * np.pi * (member.phase + turn * np.arange(frames) / frames)
    return member.amplitude * np.sin(angle), -member.amplitude * np.cos(angle)


def offsets(motion: str, frames: int = FRAMES, member: Member | None = None) -> np.ndarray:
    """(frames, 3): per frame the centre's (dx, dy) from the start point and the radius.

    `member` picks a family member for a drift or a loop (default: the straight drift, the
    circling target's loop); the targets that are members take theirs (`TARGET_MEMBERS`).
    """
    if motion not in MOTION_PHRASES:
        raise ValueError(f"unknown motion {motion!r}; use one of {sorted(MOTION_PHRASES)}")
    t = np.arange(frames) / max(frames - 1, 1)
    radius = np.full(frames, RADIUS)
    if motion in TARGET_MEMBERS:
        motion, member = TARGET_FAMILY[motion], TARGET_MEMBERS[motion]
    if motion in _STEPS:
        sx, sy = _STEPS[motion]
        side = wiggle(member or Member(), frames)
        # the wiggle runs across the drift: along y for left/right, along x for up/down
        dx, dy = sx * TRAVEL * t + abs(sy) * side, sy * TRAVEL * t + abs(sx) * side
    elif motion == "loop":
        dx, dy = loop(member or TARGET_MEMBERS["circling"], frames)
    elif motion == "bouncing":  # two hops off a floor
        dx = np.zeros(frames)
        dy = -BOUNCE_HEIGHT * np.abs(np.sin(2 * np.pi * t))
    else:  # growing
        dx = dy = np.zeros(frames)
        radius = np.linspace(*GROW_RADII, frames)
    return np.stack([dx, dy, radius], axis=-1)


def trajectory(spec: ClipSpec, frames: int = FRAMES) -> np.ndarray:
    """(frames, 3): the subject's true centre x, y and radius per frame."""
    track = offsets(spec.motion, frames, spec.member)
    track[:, 0] += spec.start[0]
    track[:, 1] += spec.start[1]
    return track


def shape_mask(shape: str, center: tuple[float, float], half: tuple[float, float],
               size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of a shape with centre (x, y) and half extents (hx, hy).

    The triangle points up: apex at the top centre, base along the bottom edge.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    hx, hy = max(half[0], 0.5), max(half[1], 0.5)
    u, v = (x - center[0]) / hx, (y - center[1]) / hy  # the box maps to [-1, 1]^2
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":
        return (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def background(frame: int, frames: int = FRAMES) -> tuple[int, int, int]:
    """The grey of frame `frame`: BACKGROUND darkened by BACKGROUND_RAMP at the first frame,
    brightened by it at the last."""
    shift = round(BACKGROUND_RAMP * (2 * frame / max(frames - 1, 1) - 1))
    return tuple(level + shift for level in BACKGROUND)


def render(spec: ClipSpec, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """uint8 (frames, size, size, 3) of the clip (hard edges, no anti-aliasing)."""
    if spec.color not in COLORS:
        raise ValueError(f"unknown colour {spec.color!r}; use one of {sorted(COLORS)}")
    video = np.empty((frames, size, size, 3), np.uint8)
    for k in range(frames):
        video[k] = background(k, frames)
        video[k, :CLOCK_ROWS, : round(size * (k + 1) / frames)] = CLOCK_COLOR
    for k, (cx, cy, radius) in enumerate(trajectory(spec, frames)):
        video[k][shape_mask(spec.shape, (cx, cy), (radius, radius), size)] = COLORS[spec.color]
    return video


def without_clock(video: np.ndarray) -> np.ndarray:
    """A copy of uint8 (F, H, W, 3) frames with the clock band (and one row below it, where a
    blurry sample's bar bleeds) painted in each frame's background: the median of its other
    three edges."""
    video = np.array(video, copy=True)
    band = CLOCK_ROWS + 1
    for frame in video:
        edges = np.concatenate([frame[-1], frame[band:, 0], frame[band:, -1]]).astype(np.float32)
        frame[:band] = np.median(edges, axis=0).round().astype(np.uint8)
    return video


def without_clocks(video: np.ndarray, tolerance: int = 24) -> np.ndarray:
    """`without_clock`, and in every frame the pixels within `tolerance` levels of its background
    painted BACKGROUND: what optical flow (the motion-fidelity score) reads, without the
    background ramp's global brightness change."""
    video = without_clock(video)
    for frame in video:
        grey = np.median(frame[-1], axis=0)
        near = (np.abs(frame.astype(np.float32) - grey) <= tolerance).all(axis=-1)
        frame[near] = BACKGROUND
    return video


def start_range(motion: str, frames: int = FRAMES, size: int = SIZE, margin: float = 2.0,
                member: Member | None = None):
    """((xmin, xmax), (ymin, ymax)) of start points that keep the whole clip inside the frame."""
    track = offsets(motion, frames, member)
    reach = track[:, 2].max() + margin
    lo = reach - track[:, :2].min(axis=0)
    hi = size - 1 - reach - track[:, :2].max(axis=0)
    return (lo[0], hi[0]), (lo[1], hi[1])


def random_spec(rng: np.random.Generator, shape: str, color: str, motion: str,
                spread: float | None = None, member: Member | None = None, frames: int = FRAMES) -> ClipSpec:
    """A spec with a random start: anywhere in `start_range`, or within `spread` pixels of the
    centred start (clipped to the range)."""
    (x0, x1), (y0, y1) = start_range(motion, frames, member=member)
    if spread is not None:
        (cx, cy) = centered_spec(shape, color, motion, member, frames).start
        x0, x1 = max(x0, cx - spread), min(x1, cx + spread)
        y0, y1 = max(y0, cy - spread), min(y1, cy + spread)
    return ClipSpec(shape, color, motion, (float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))), member)


def centered_spec(shape: str, color: str, motion: str, member: Member | None = None,
                  frames: int = FRAMES) -> ClipSpec:
    """The spec whose clip (of `frames` frames) is centred in the frame (the middle of `start_range`)."""
    (x0, x1), (y0, y1) = start_range(motion, frames, member=member)
    return ClipSpec(shape, color, motion, ((x0 + x1) / 2, (y0 + y1) / 2), member)


def random_member(rng: np.random.Generator, motion: str) -> Member | None:
    """A random member of a family (None for "still", which has one)."""
    if motion == "loop":
        return Member("loop", float(rng.uniform(*LOOP_RADIUS)), phase=float(rng.uniform()),
                      clockwise=bool(rng.integers(2)))
    if motion == "still":
        return None
    if motion not in DRIFTS:
        raise ValueError(f"{motion!r} is no family; use one of {FAMILIES}")
    kind = WIGGLE_KINDS[rng.integers(len(WIGGLE_KINDS))]
    if kind == "straight":
        return Member()
    if kind == "arc":
        return Member("arc", float(rng.uniform(*ARC_AMPLITUDE) * rng.choice([-1.0, 1.0])))
    return Member(kind, float(rng.uniform(*WIGGLE_AMPLITUDE)), float(rng.choice(WIGGLE_PERIODS)), float(rng.uniform()))


def family_specs(per_caption: int, seed: int, spread: float | None = START_SPREAD,
                 frames: int = FRAMES) -> list[ClipSpec]:
    """`per_caption` clips of every shape x colour x family, each a random member of its family,
    started within `spread` pixels of its centred start: the v2 pretraining data (of `frames`-frame clips)."""
    rng = np.random.default_rng(seed)
    specs = []
    for _ in range(per_caption):
        for shape, color, motion in all_combinations(FAMILIES):
            specs.append(random_spec(rng, shape, color, motion, spread, random_member(rng, motion), frames))
    return specs


def all_combinations(motions=BASE_MOTIONS) -> list[tuple[str, str, str]]:
    return [(s, c, m) for m in motions for s in SHAPES for c in COLORS]


def sample_specs(per_combination: int, seed: int, motions=BASE_MOTIONS,
                 spread: float | None = START_SPREAD) -> list[ClipSpec]:
    """`per_combination` clips of every shape x colour x motion, start points drawn from `seed`
    within `spread` pixels of the centred start (None: anywhere the clip fits)."""
    rng = np.random.default_rng(seed)
    return [random_spec(rng, *combo, spread=spread)
            for _ in range(per_combination) for combo in all_combinations(motions)]


def write_clip(spec: ClipSpec, folder: str | Path, fps: float = FPS, frames: int = FRAMES) -> Path:
    """Write `<stem>.mp4` and its `<stem>.txt` caption (what MotionDirector's folder dataset reads)."""
    from utils.tools.synthetic import write_caption
    from utils.io.video_io import write_video

    path = write_video(Path(folder) / f"{spec.stem}.mp4", render(spec, frames), fps)
    write_caption(path, spec.caption)
    return path


# The subjects of the bundled reference clips: one for single-video training, three for multi-video.
REFERENCE_SUBJECTS = (("square", "blue"), ("circle", "yellow"), ("triangle", "red"))


def write_reference_clips(root: str | Path, frames: int = FRAMES, subjects=REFERENCE_SUBJECTS) -> list[Path]:
    """The new motions' reference clips of `frames` frames: `<root>/<motion>/single/` (the first of
    `subjects`, centred) and `<root>/<motion>/multi/` (all of them), each clip with its caption."""
    written = []
    for motion in NEW_MOTIONS:
        for index, (shape, color) in enumerate(subjects):
            spec = centered_spec(shape, color, motion, frames=frames)
            folders = ["multi"] + (["single"] if index == 0 else [])
            written += [write_clip(spec, Path(root) / motion / folder, frames=frames) for folder in folders]
    return written
