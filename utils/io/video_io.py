"""Read and write video files.

Reading uses decord, as the original did, so training frames match it bit for bit;
when decord is not installed (it has no wheels for some platforms) imageio-ffmpeg
decodes instead. Writing uses imageio: H.264 mp4, or GIF for a `.gif` path.
Every problem with a user's file becomes a one-line `UserError`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import imageio
import numpy as np
import torch

from utils.errors import UserError

try:
    import decord
    from decord._ffi.base import DECORDError
except ImportError:  # no wheel for this platform: fall back to imageio-ffmpeg
    decord = None
    DECORDError = RuntimeError

logger = logging.getLogger(__name__)

_REENCODE_HINT = "re-export it as an H.264 .mp4 (e.g. ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4)"


class VideoInfo(NamedTuple):
    num_frames: int
    fps: float
    height: int
    width: int


def video_info(path: str | Path) -> VideoInfo:
    """Frame count, average frame rate and frame size of a video file."""
    path = _existing_file(path)
    info = _info_decord(path) if decord is not None else _info_imageio(path)
    if info.num_frames == 0:
        raise UserError(f"video {path} has no frames; {_REENCODE_HINT}")
    return info


def read_frames(path: str | Path, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at `indices` (in that order) as uint8 (F, H, W, 3)."""
    path = _existing_file(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"read_frames({path}): no frame indices given")
    if min(indices) < 0:
        raise ValueError(f"read_frames({path}): negative frame index {min(indices)}")
    if decord is not None:
        return _read_decord(path, indices)
    return _read_imageio(path, indices)


def write_video(path: str | Path, frames, fps: float = 8) -> Path:
    """Write uint8 frames (F, H, W, 3) to an H.264 mp4, or to a GIF for a `.gif` path.

    Also takes a torch tensor, a (F, 3, H, W) layout, and floats in [0, 1]
    (the convention of diffusers' video outputs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _as_uint8_fhwc(frames)
    if path.suffix.lower() == ".gif":
        # the pillow plugin takes the frame duration in milliseconds
        imageio.v3.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        return path
    # yuv420p (what every player decodes) halves chroma resolution, so it needs even sizes
    frames = _pad_to_even(frames)
    imageio.v2.mimwrite(path, list(frames), fps=fps, codec="libx264", pixelformat="yuv420p",
                        macro_block_size=1)
    return path


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"video file not found: {path} (check the path in your config)")
    return path


def _undecodable(path: Path, err: Exception) -> UserError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"cannot decode video {path} ({detail[:120]}): not a video or corrupt; {_REENCODE_HINT}")


def _out_of_range(path: Path, index: int, num_frames: int) -> UserError:
    return UserError(f"video {path} has {num_frames} frames but frame {index} was asked for; "
                     "check the frame indices / n_sample_frames against the video length")


def _open_decord(path: Path):
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0))
    except (DECORDError, RuntimeError) as err:
        raise _undecodable(path, err) from err


def _info_decord(path: Path) -> VideoInfo:
    reader = _open_decord(path)
    num_frames = len(reader)
    if num_frames == 0:
        return VideoInfo(0, 0.0, 0, 0)
    try:
        # only height and width: for some widths decord mislabels the channels (dmlc/decord#336)
        height, width = reader[0].shape[:2]
    except (DECORDError, RuntimeError, IndexError) as err:
        raise _undecodable(path, err) from err
    return VideoInfo(num_frames, float(reader.get_avg_fps()), int(height), int(width))


def _read_decord(path: Path, indices: list[int]) -> np.ndarray:
    reader = _open_decord(path)
    if max(indices) >= len(reader):
        raise _out_of_range(path, max(indices), len(reader))
    try:
        batch = reader.get_batch(indices)
    except (DECORDError, RuntimeError) as err:
        # decord 0.6 fails on some frame widths (16, 24, 48, 72, ...: dmlc/decord#336)
        logger.debug("decord could not decode %s (%s); using imageio-ffmpeg", path, err)
        return _read_imageio(path, indices)
    # decord returns its own NDArray, or a torch tensor if someone set its torch bridge
    frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    return np.ascontiguousarray(frames, dtype=np.uint8)


# imageio-ffmpeg raises a mix of these for unreadable input
_IMAGEIO_ERRORS = (OSError, RuntimeError, ValueError, IndexError, StopIteration)


def _info_imageio(path: Path) -> VideoInfo:
    try:
        with imageio.v2.get_reader(path, "ffmpeg") as reader:
            meta = reader.get_meta_data()
            num_frames = reader.count_frames()  # decodes the stream: nframes in metadata is unreliable
    except _IMAGEIO_ERRORS as err:
        raise _undecodable(path, err) from err
    width, height = meta["size"]
    return VideoInfo(int(num_frames), float(meta["fps"]), int(height), int(width))


def _read_imageio(path: Path, indices: list[int]) -> np.ndarray:
    wanted, last, found, decoded = set(indices), max(indices), {}, 0
    try:
        with imageio.v2.get_reader(path, "ffmpeg") as reader:
            # decode sequentially: seeking in imageio-ffmpeg is not frame-exact
            for frame in reader:
                if decoded in wanted:
                    found[decoded] = frame
                decoded += 1
                if decoded > last:
                    break
    except _IMAGEIO_ERRORS as err:
        raise _undecodable(path, err) from err
    if decoded == 0:
        raise UserError(f"video {path} has no frames; {_REENCODE_HINT}")
    if decoded <= last:
        raise _out_of_range(path, last, decoded)
    return np.stack([found[i] for i in indices]).astype(np.uint8)


def _as_uint8_fhwc(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    if frames.shape[-1] != 3 and frames.shape[1] == 3:
        frames = frames.transpose(0, 2, 3, 1)
    if frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames (F, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(frames)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        logger.info("padding %dx%d frames by one edge pixel to even size for yuv420p",
                    frames.shape[2], frames.shape[1])
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames
