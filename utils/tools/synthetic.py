"""Small deterministic synthetic clips and images, so training, tests and demos run offline.

`python -m utils.tools.synthetic test_data/` writes the project's sample data.
Every generator is pure arithmetic (no random numbers), so the same call gives the
same pixels on every machine; H.264 encoding of them is deterministic too.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from utils.io.video_io import write_video

logger = logging.getLogger(__name__)

Size = int | tuple[int, int]  # an int is a square; a tuple is (width, height)

# unit step of the shape's centre per direction, in image coordinates (y grows downwards)
_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def _wh(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def gradient_background(size: Size, hue: float = 0.0) -> np.ndarray:
    """A smooth float (H, W, 3) background in [0, 1]; `hue` in [0, 1) shifts its colours."""
    width, height = _wh(size)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    phase = 2 * np.pi * hue
    red = 0.35 + 0.3 * u * np.cos(phase) ** 2
    green = 0.35 + 0.3 * v
    blue = 0.55 - 0.25 * u * v + 0.1 * np.sin(phase)
    return np.stack([red, green, blue], axis=-1)


def draw_shape(canvas: np.ndarray, center: tuple[float, float], radius: float,
               color=(0.9, 0.15, 0.1), shape: str = "square") -> np.ndarray:
    """Paint a filled square or circle (float colour in [0, 1]) onto `canvas` in place."""
    height, width, _ = canvas.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = x - center[0], y - center[1]
    if shape == "square":
        mask = (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    elif shape == "circle":
        mask = dx * dx + dy * dy <= radius * radius
    else:
        raise ValueError(f"unknown shape {shape!r}; use 'square' or 'circle'")
    canvas[mask] = color
    return canvas


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def moving_shape_frames(frames: int = 16, size: Size = 64, direction: str = "right",
                        shape: str = "square", color=(0.9, 0.15, 0.1), hue: float = 0.0) -> np.ndarray:
    """uint8 (F, H, W, 3): a shape crossing a gradient background from one side to the other."""
    if direction not in _DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; use one of {sorted(_DIRECTIONS)}")
    width, height = _wh(size)
    radius = min(width, height) / 8
    step_x, step_y = _DIRECTIONS[direction]
    background = gradient_background(size, hue)
    video = []
    for t in np.linspace(-1.0, 1.0, frames):
        # travel from one border to the other, keeping the shape inside the frame
        cx = width / 2 + step_x * t * (width / 2 - radius - 1)
        cy = height / 2 + step_y * t * (height / 2 - radius - 1)
        video.append(draw_shape(background.copy(), (cx, cy), radius, color, shape))
    return to_uint8(np.stack(video))


def zoom_frames(frames: int = 24, size: Size = 64, zoom: tuple[float, float] = (1.0, 3.0)) -> np.ndarray:
    """uint8 (F, H, W, 3): coloured rings and spokes that grow, like a camera zooming in."""
    width, height = _wh(size)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = x - (width - 1) / 2, y - (height - 1) / 2
    radius, angle = np.hypot(dx, dy) / min(width, height), np.arctan2(dy, dx)
    video = []
    # geometric steps make the zoom speed look constant
    for scale in np.geomspace(zoom[0], zoom[1], frames):
        rings = 0.5 + 0.5 * np.cos(2 * np.pi * 6 * radius / scale)
        spokes = 0.5 + 0.5 * np.cos(8 * angle)
        video.append(np.stack([0.2 + 0.6 * rings, 0.2 + 0.5 * spokes * rings, 0.8 - 0.5 * rings], -1))
    return to_uint8(np.stack(video))


def index_frames(frames: int = 16, size: Size = 32, level_step: int = 12) -> np.ndarray:
    """uint8 (F, H, W, 3): frame k is flat grey `10 + level_step * k`, so a reader can tell which
    frames it got (the level survives lossy encoding to within a few units)."""
    width, height = _wh(size)
    if 10 + level_step * (frames - 1) > 255:
        raise ValueError(f"{frames} frames need level_step <= {245 // max(frames - 1, 1)}")
    levels = 10 + level_step * np.arange(frames)
    return np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).astype(np.uint8)


def make_moving_shape_video(path, frames: int = 16, size: Size = 64, fps: float = 8,
                            direction: str = "right", shape: str = "square",
                            color=(0.9, 0.15, 0.1), hue: float = 0.0) -> Path:
    """Write a clip of a shape moving across a gradient background."""
    return write_video(path, moving_shape_frames(frames, size, direction, shape, color, hue), fps)


def make_zoom_video(path, frames: int = 24, size: Size = 64, fps: float = 8,
                    zoom: tuple[float, float] = (1.0, 3.0)) -> Path:
    """Write a clip of a ring pattern zooming in (zoom=(3, 1) zooms out)."""
    return write_video(path, zoom_frames(frames, size, zoom), fps)


def make_index_video(path, frames: int = 16, size: Size = 32, fps: float = 8, level_step: int = 12) -> Path:
    """Write a clip whose frame k is flat grey 10 + level_step * k (see `index_frames`)."""
    return write_video(path, index_frames(frames, size, level_step), fps)


def make_image(path, size: Size = 64, shape: str = "circle", color=(0.9, 0.15, 0.1),
               hue: float = 0.0, position: tuple[float, float] = (0.5, 0.5)) -> Path:
    """Write a still of a shape on a gradient background; `position` is relative (x, y)."""
    width, height = _wh(size)
    canvas = gradient_background(size, hue)
    center = (position[0] * (width - 1), position[1] * (height - 1))
    draw_shape(canvas, center, min(width, height) / 5, color, shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(canvas)).save(path)
    return path


def write_caption(media_path, text: str) -> Path:
    """Write the same-named `.txt` caption the datasets read."""
    caption = Path(media_path).with_suffix(".txt")
    caption.write_text(text + "\n", encoding="utf8")
    return caption


def write_sample_data(root) -> list[Path]:
    """The project's sample data: what the configs in configs/ train on."""
    root = Path(root)
    red, blue, green = (0.9, 0.15, 0.1), (0.1, 0.3, 0.9), (0.1, 0.75, 0.25)
    written = []

    clip = make_moving_shape_video(root / "moving_square/moving_square.mp4", 16, 128, 8, "right", "square", red)
    written += [clip, write_caption(clip, "A square is moving to the right.")]

    # one motion concept (moving right) with different appearances, for multi-video training;
    # the last clip is 16 fps so the folder dataset's fps subsampling has real data to act on
    multi = [("red_square", 16, 8, "square", red, 0.0, "A red square is moving to the right."),
             ("blue_circle", 16, 8, "circle", blue, 0.3, "A blue circle is moving to the right."),
             ("green_square", 32, 16, "square", green, 0.6, "A green square is moving to the right.")]
    for name, frames, fps, shape, color, hue, caption in multi:
        clip = make_moving_shape_video(root / f"multi_moving/{name}.mp4", frames, 128, fps, "right",
                                       shape, color, hue)
        written += [clip, write_caption(clip, caption)]

    clip = make_zoom_video(root / "zoom_in/zoom_in.mp4", 24, 128, 8)
    written += [clip, write_caption(clip, "The camera is zooming in on a ring pattern.")]

    image = make_image(root / "images/shape.png", 128, "circle", red)
    written += [image, write_caption(image, "A red circle on a gradient background.")]
    written.append(make_image(root / "images_multi/shape_1.png", 128, "circle", blue, 0.3, (0.4, 0.5)))
    written.append(make_image(root / "images_multi/shape_2.png", (128, 96), "circle", blue, 0.3, (0.6, 0.4)))
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the project's synthetic sample data.")
    parser.add_argument("root", nargs="?", default="test_data", help="output folder (default: test_data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_sample_data(args.root):
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)


if __name__ == "__main__":
    main()
