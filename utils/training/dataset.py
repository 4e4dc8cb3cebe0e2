"""Training data: the original's four dataset types as torch Datasets.

* `folder`: every video in `path`, one random window of `n_sample_frames` frames each,
  subsampled to `fps`; prompt from a same-named .txt caption, else `fallback_prompt`.
* `single_video`: `single_video_path` cut into consecutive chunks; prompt `single_video_prompt`.
* `image`: every image in `image_dir` as a still clip (the image repeated to 16 frames, as the original).
* `json`: the Video-BLIP2-Preprocessor layout, one item per captioned frame range.

Each item is {"pixel_values": float32 (F, 3, H, W) in [-1, 1], "prompt": str, "dataset": type name}.
`build_dataset` makes them from the `train_data` section of a config.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from utils.errors import UserError
from utils.io.video_io import VideoInfo, read_frames, video_info

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".webm", ".flv", ".mjpeg")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# The original trains on an image as a still clip of 16 frames (whatever n_sample_frames says):
# its cached latents and inversion noise then have 16 frames, and a noise prior from an image run
# generates the default 16 frames.
IMAGE_CLIP_FRAMES = 16


# ---------------------------------------------------------------- frames -> tensors

def bucket_size(width: int, height: int, frame_width: int, frame_height: int,
                min_size: int = 192) -> tuple[int, int]:
    """The original's `sensible_buckets`: the (width, height) to train a frame of this size at.

    The long side keeps the configured size; the short side becomes whichever of
    `size - 64` and `size - 128` (each at least `min_size`) is closer to the size that
    would keep the aspect ratio. Square frames keep the configured size.
    Unlike the original, the floor never exceeds the configured size, so small test
    resolutions (e.g. 64) are not blown up to 192.
    """
    def short_side(size: int, ideal: float) -> int:
        floor = min(min_size, size)
        candidates = [max(floor, abs(size - 64)), max(floor, abs(size - 128))]
        return min(candidates, key=lambda c: abs(c - ideal))  # first wins a tie, as in the original

    if frame_height > frame_width:
        return short_side(width, width * frame_width / frame_height), height
    if frame_height < frame_width:
        return width, short_side(height, height * frame_height / frame_width)
    return width, height


def to_pixel_values(frames: np.ndarray, width: int, height: int) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, 3, height, width) scaled to [-1, 1]."""
    # np.require copies only read-only (e.g. PIL-backed) or non-contiguous arrays
    video = torch.from_numpy(np.require(frames, np.uint8, ["C", "W"])).permute(0, 3, 1, 2).float()
    if tuple(video.shape[-2:]) != (height, width):
        video = F.interpolate(video, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        # the original resized uint8 tensors, so its pixels stay on the 0..255 grid
        video = video.round().clamp(0, 255)
    return video / 127.5 - 1.0


def read_caption(media_path: str | Path, fallback: str = "") -> str:
    """Text of the same-named .txt beside a video or image, else `fallback`."""
    caption = Path(media_path).with_suffix(".txt")
    if caption.is_file():
        return caption.read_text(encoding="utf8").strip()
    return fallback


def list_files(folder: str | Path, extensions: tuple[str, ...], what: str, key: str) -> list[Path]:
    """Sorted files with one of `extensions` in `folder` (sorted so item order is reproducible)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"train_data.{key}: folder {folder} not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise UserError(f"train_data.{key}: no {what} ({', '.join(extensions)}) in {folder}")
    return files


def _warn_short(path, got: int, wanted: int) -> None:
    logger.warning("%s gives only %d of n_sample_frames=%d frames; training on %d-frame clips from it",
                   path, got, wanted, got)


# ---------------------------------------------------------------- frame sampling

def frame_stride(num_frames: int, native_fps: float, fps: float) -> int:
    """Take every n-th frame to play at `fps`: round(native_fps / fps), at least 1, at most the length."""
    return min(num_frames, max(1, round(native_fps / fps)))


def sample_frame_indices(num_frames: int, native_fps: float, fps: float, n_sample_frames: int,
                         rng: random.Random | None = None) -> list[int]:
    """The folder dataset's sampling: every round(native_fps / fps)-th frame, from a random start.

    A video too short for `n_sample_frames` gives all the frames it has at that stride,
    as in the original (no padding or repetition).
    """
    rng = rng or random
    stride = frame_stride(num_frames, native_fps, fps)
    available = num_frames // stride
    count = min(n_sample_frames, available)
    start = rng.randint(0, available - count)
    return [stride * i for i in range(start, start + count)]


def range_frame_indices(num_frames: int, start: int, frame_step: int, n_sample_frames: int) -> list[int]:
    """The json dataset's sampling: `n_sample_frames` frames every `frame_step` from `start`."""
    start = min(max(start, 0), num_frames)  # the original clamps the start into the video
    return list(range(start, num_frames, frame_step))[:n_sample_frames]


def chunk_frame_indices(num_frames: int, frame_step: int, n_sample_frames: int) -> list[list[int]]:
    """The single-video chunks: every `frame_step`-th frame, cut into runs of `n_sample_frames`.
    The last chunk keeps whatever is left over, as in the original."""
    frames = list(range(0, num_frames, frame_step))
    return [frames[i:i + n_sample_frames] for i in range(0, len(frames), n_sample_frames)]


# ---------------------------------------------------------------- datasets

class VideoFolderDataset(Dataset):
    """`folder`: one item per video in `path`."""

    name = "folder"

    def __init__(self, path: str = "./data", width: int = 256, height: int = 256, n_sample_frames: int = 16,
                 fps: float = 8, fallback_prompt: str = "", use_bucketing: bool = False):
        if fps <= 0 or n_sample_frames < 1:
            raise UserError(f"train_data.fps ({fps}) must be positive and n_sample_frames ({n_sample_frames}) "
                            "at least 1")
        self.files = list_files(path, VIDEO_EXTENSIONS, "videos", "path")
        self.width, self.height, self.use_bucketing = width, height, use_bucketing
        self.n_sample_frames, self.fps = n_sample_frames, fps
        self.prompts = [read_caption(f, fallback_prompt) for f in self.files]
        # read every header now, so a broken file fails before training starts
        self.infos = [video_info(f) for f in self.files]
        for video, info in zip(self.files, self.infos):
            available = info.num_frames // frame_stride(info.num_frames, info.fps, fps)
            if available < n_sample_frames:
                _warn_short(video, available, n_sample_frames)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        info = self.infos[index]
        indices = sample_frame_indices(info.num_frames, info.fps, self.fps, self.n_sample_frames)
        frames = read_frames(self.files[index], indices)
        size = _frame_size(self, info)
        return {"pixel_values": to_pixel_values(frames, *size), "prompt": self.prompts[index], "dataset": self.name}


class SingleVideoDataset(Dataset):
    """`single_video`: one item per chunk of `single_video_path`."""

    name = "single_video"

    def __init__(self, single_video_path: str = "", single_video_prompt: str = "", width: int = 256,
                 height: int = 256, n_sample_frames: int = 4, frame_step: int = 1, use_bucketing: bool = False):
        if not single_video_path:
            raise UserError("train_data.single_video_path is not set; point it at a video file")
        if frame_step < 1 or n_sample_frames < 1:
            raise UserError(f"train_data.frame_step ({frame_step}) and n_sample_frames ({n_sample_frames}) "
                            "must be at least 1")
        self.path, self.prompt = Path(single_video_path), single_video_prompt
        self.width, self.height, self.use_bucketing = width, height, use_bucketing
        self.info = video_info(self.path)
        self.chunks = chunk_frame_indices(self.info.num_frames, frame_step, n_sample_frames)
        if len(self.chunks[-1]) < n_sample_frames:
            _warn_short(f"{self.path} (last chunk)", len(self.chunks[-1]), n_sample_frames)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict:
        frames = read_frames(self.path, self.chunks[index])
        pixels = to_pixel_values(frames, *_frame_size(self, self.info))
        return {"pixel_values": pixels, "prompt": self.prompt, "dataset": self.name}


class ImageDataset(Dataset):
    """`image`: one still clip of IMAGE_CLIP_FRAMES frames per image in `image_dir`."""

    name = "image"

    def __init__(self, image_dir: str = "", width: int = 256, height: int = 256, single_img_prompt: str = "",
                 fallback_prompt: str = "", use_bucketing: bool = False):
        if not image_dir:
            raise UserError("train_data.image_dir is not set; point it at a folder of images")
        self.files = list_files(image_dir, IMAGE_EXTENSIONS, "images", "image_dir")
        self.width, self.height, self.use_bucketing = width, height, use_bucketing
        # as in the original, a set single_img_prompt wins over the per-image captions
        self.prompts = [single_img_prompt or read_caption(f, fallback_prompt) for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                frame = np.asarray(image.convert("RGB"))
        except OSError as err:
            raise UserError(f"cannot read image {path} ({err}); re-save it as PNG or JPEG") from err
        size = _frame_size(self, VideoInfo(1, 0.0, frame.shape[0], frame.shape[1]))
        still = to_pixel_values(frame[None], *size).expand(IMAGE_CLIP_FRAMES, -1, -1, -1).contiguous()
        return {"pixel_values": still, "prompt": self.prompts[index], "dataset": self.name}


class VideoJsonDataset(Dataset):
    """`json`: one item per captioned frame range of a Video-BLIP2-Preprocessor JSON file.

    Layout: {"data": [{"video_path": ..., "data": [{"frame_index": i, "prompt": ..., "clip_path": optional}]}]}.
    Frames are `n_sample_frames` taken every `frame_step` from `frame_index`; an entry with a
    `clip_path` reads that pre-cut clip from `sample_start_idx` instead.
    """

    name = "json"

    def __init__(self, json_path: str = "", json_data: Mapping | None = None, width: int = 256, height: int = 256,
                 n_sample_frames: int = 4, sample_start_idx: int = 1, frame_step: int = 1,
                 vid_data_key: str = "video_path", use_bucketing: bool = False):
        self.width, self.height, self.use_bucketing = width, height, use_bucketing
        self.n_sample_frames, self.frame_step = n_sample_frames, frame_step
        base = Path(json_path).parent if json_path else Path(".")
        self.items = [self._item(entry, base, sample_start_idx)
                      for entry in _json_entries(json_path, json_data, vid_data_key)]
        if not self.items:
            raise UserError(f"train_data.json_path: no captioned clips in {json_path or 'json_data'}")

    def _item(self, entry: dict, base: Path, sample_start_idx: int) -> tuple[Path, list[int], str, VideoInfo]:
        path = _resolve(entry["clip_path"] or entry["video_path"], base)
        start = sample_start_idx if entry["clip_path"] else int(entry["frame_index"])
        info = video_info(path)
        indices = range_frame_indices(info.num_frames, start, self.frame_step, self.n_sample_frames)
        if not indices:
            raise UserError(f"json entry {entry['prompt']!r}: frame_index {start} is past the end of "
                            f"{path} ({info.num_frames} frames)")
        if len(indices) < self.n_sample_frames:
            _warn_short(f"{path} from frame {start}", len(indices), self.n_sample_frames)
        return path, indices, str(entry["prompt"]), info

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, indices, prompt, info = self.items[index]
        frames = read_frames(path, indices)
        return {"pixel_values": to_pixel_values(frames, *_frame_size(self, info)), "prompt": prompt,
                "dataset": self.name}


def _frame_size(dataset, info: VideoInfo) -> tuple[int, int]:
    # Bucketing keeps the true aspect ratio, as the original's folder, single_video and image
    # datasets did. Its json dataset passed (width, 3) of an HWC frame as the frame size, so
    # every json clip was bucketed as landscape: fixed here (same result for landscape clips).
    if dataset.use_bucketing:
        return bucket_size(dataset.width, dataset.height, info.width, info.height)
    return dataset.width, dataset.height


def _resolve(path: str, base: Path) -> Path:
    """A path from the JSON file: as given (relative to the working directory, as the
    original read it), else relative to the JSON file's folder."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return base / path


def _json_entries(json_path: str, json_data: Mapping | None, vid_data_key: str) -> list[dict]:
    """Flatten the nested layout to one dict per captioned frame range."""
    if json_path:
        try:
            json_data = json.loads(Path(json_path).read_text(encoding="utf8"))
        except FileNotFoundError as err:
            raise UserError(f"train_data.json_path: file {json_path} not found") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"train_data.json_path: {json_path} is not valid JSON ({err})") from err
    if json_data is None:
        raise UserError("train_data.json_path is not set; point it at a Video-BLIP2-Preprocessor JSON file")
    try:
        return [{"video_path": video[vid_data_key], "frame_index": clip["frame_index"],
                 "prompt": clip["prompt"], "clip_path": clip.get("clip_path")}
                for video in json_data["data"] for clip in video["data"]]
    except (KeyError, TypeError) as err:
        raise UserError(f"train_data.json_path: {json_path or 'json_data'} lacks key {err}; expected "
                        f'{{"data": [{{"{vid_data_key}": ..., "data": [{{"frame_index": ..., "prompt": ...}}]}}]}}'
                        ) from err


# ---------------------------------------------------------------- config -> dataset

# the original concatenates the datasets in this order, whatever the order of dataset_types
DATASET_CLASSES = {cls.name: cls for cls in (VideoJsonDataset, SingleVideoDataset, ImageDataset,
                                             VideoFolderDataset)}


def _config_value(train_data, key: str, default):
    value = train_data.get(key, default) if isinstance(train_data, Mapping) else getattr(train_data, key, default)
    return default if value is None else value


def build_dataset(train_data, dataset_types) -> Dataset:
    """The training Dataset for `dataset_types`, configured from `train_data`.

    `train_data` is the config's train_data section (DictConfig, dataclass or dict) with the
    original's keys; a key it leaves out takes the original's default.
    """
    if isinstance(dataset_types, str):
        dataset_types = [dataset_types]
    valid = ", ".join(DATASET_CLASSES)
    unknown = [t for t in dataset_types if t not in DATASET_CLASSES]
    if unknown:
        raise UserError(f"unknown dataset type(s) {', '.join(map(str, unknown))}; valid types: {valid}")
    if not dataset_types:
        raise UserError(f"dataset_types is empty; list one or more of: {valid}")
    datasets = []
    for name, cls in DATASET_CLASSES.items():
        if name in dataset_types:
            params = inspect.signature(cls.__init__).parameters
            kwargs = {key: _config_value(train_data, key, p.default) for key, p in params.items() if key != "self"}
            datasets.append(cls(**kwargs))
            logger.info("dataset %s: %d items", name, len(datasets[-1]))
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
