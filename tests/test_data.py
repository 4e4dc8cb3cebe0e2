"""Video I/O, synthetic data and the four training datasets (CPU, a few seconds)."""

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import ConcatDataset

from utils.io import video_io
from utils.tools import synthetic
from utils.training.dataset import (ImageDataset, SingleVideoDataset, VideoFolderDataset, VideoJsonDataset, bucket_size,
                           build_dataset, sample_frame_indices)
from utils.errors import UserError
from utils.io.video_io import read_frames, video_info, write_video

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COMPAT = SHARED / "compat" / "original_md"


def frame_levels(pixel_values: torch.Tensor) -> list[int]:
    """Frame numbers of an index video (see synthetic.index_frames) from dataset pixels."""
    grey = (pixel_values + 1) * 127.5
    return [round((level - 10) / 12) for level in grey.mean(dim=(1, 2, 3)).tolist()]


@pytest.fixture
def shape_clip(tmp_path):
    return synthetic.make_moving_shape_video(tmp_path / "clip.mp4", frames=12, size=(64, 48), fps=8)


# ---------------------------------------------------------------- video_io

def test_write_read_roundtrip(shape_clip):
    expected = synthetic.moving_shape_frames(12, (64, 48))
    assert video_info(shape_clip) == (12, 8.0, 48, 64)
    frames = read_frames(shape_clip, [0, 7, 3])
    assert frames.shape == (3, 48, 64, 3) and frames.dtype == np.uint8
    error = np.abs(frames.astype(int) - expected[[0, 7, 3]].astype(int))
    assert error.mean() < 4  # H.264 is lossy


def test_imageio_fallback_matches_decord(shape_clip, monkeypatch):
    with_decord = read_frames(shape_clip, [2, 5])
    monkeypatch.setattr(video_io, "decord", None)
    assert video_info(shape_clip) == (12, 8.0, 48, 64)
    assert np.abs(read_frames(shape_clip, [2, 5]).astype(int) - with_decord).max() <= 2


def test_widths_decord_cannot_batch(tmp_path):
    # decord 0.6 raises on get_batch for some widths (dmlc/decord#336); read_frames must still work
    for width in (48, 72):
        clip = synthetic.make_index_video(tmp_path / f"w{width}.mp4", frames=4, size=(width, 32))
        assert video_info(clip) == (4, 8.0, 32, width)
        frames = read_frames(clip, [3, 1])
        assert frames.shape == (2, 32, width, 3)
        assert [round((f.mean() - 10) / 12) for f in frames] == [3, 1]


def test_write_odd_size_tensor_and_gif(tmp_path):
    frames = torch.rand(4, 3, 15, 21)  # float [0, 1], channels first, odd sizes
    info = video_info(write_video(tmp_path / "sub" / "odd.mp4", frames, fps=4))
    assert (info.num_frames, info.height, info.width) == (4, 16, 22)  # padded to even
    gif = write_video(tmp_path / "a.gif", synthetic.index_frames(3, 8), fps=4)
    assert gif.stat().st_size > 0


def test_video_errors(tmp_path, shape_clip):
    with pytest.raises(UserError, match="not found.*missing.mp4"):
        video_info(tmp_path / "missing.mp4")
    corrupt = tmp_path / "x.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(UserError, match="cannot decode video .*x.mp4"):
        video_info(corrupt)
    with pytest.raises(UserError, match="cannot decode video .*x.mp4"):
        read_frames(corrupt, [0])
    with pytest.raises(UserError, match="has 12 frames but frame 12"):
        read_frames(shape_clip, [0, 12])


# ---------------------------------------------------------------- sampling and resizing

def test_frame_stride_follows_fps(tmp_path):
    assert np.all(np.diff(sample_frame_indices(30, 24, 8, 5, random.Random(0))) == 3)  # 24 fps -> 8 fps
    assert sample_frame_indices(30, 25, 8, 5, random.Random(0))[1] % 3 == 0  # round(25 / 8) = 3
    for seed in range(20):
        indices = sample_frame_indices(40, 16, 8, 8, random.Random(seed))
        assert len(indices) == 8 and np.all(np.diff(indices) == 2) and indices[-1] < 40
    # end to end: a 16 fps index clip read at fps=8 gives every second frame
    synthetic.make_index_video(tmp_path / "v" / "count.mp4", frames=20, size=32, fps=16)
    item = VideoFolderDataset(tmp_path / "v", width=32, height=32, n_sample_frames=6, fps=8)[0]
    levels = frame_levels(item["pixel_values"])
    assert len(levels) == 6 and np.all(np.diff(levels) == 2)


def test_short_video_gives_fewer_frames(tmp_path, caplog):
    synthetic.make_index_video(tmp_path / "v" / "short.mp4", frames=5, size=32, fps=8)
    with caplog.at_level(logging.WARNING):
        dataset = VideoFolderDataset(tmp_path / "v", width=32, height=32, n_sample_frames=8, fps=8)
    assert "only 5 of n_sample_frames=8" in caplog.text
    assert frame_levels(dataset[0]["pixel_values"]) == [0, 1, 2, 3, 4]


def test_folder_item_format_and_resize(tmp_path):
    clip = synthetic.make_moving_shape_video(tmp_path / "v" / "a.mp4", frames=10, size=64)
    synthetic.write_caption(clip, "A square is moving to the right.")
    synthetic.make_moving_shape_video(tmp_path / "v" / "b.mp4", frames=10, size=64, direction="up")
    dataset = VideoFolderDataset(tmp_path / "v", width=40, height=24, n_sample_frames=4, fallback_prompt="fallback")
    first, second = dataset[0], dataset[1]
    assert first["pixel_values"].shape == (4, 3, 24, 40) and first["pixel_values"].dtype == torch.float32
    assert -1 <= first["pixel_values"].min() and first["pixel_values"].max() <= 1
    assert first["prompt"] == "A square is moving to the right." and second["prompt"] == "fallback"
    assert first["dataset"] == "folder"


def test_same_size_is_not_resampled(tmp_path):
    clip = synthetic.make_moving_shape_video(tmp_path / "v" / "a.mp4", frames=4, size=(48, 32))
    item = VideoFolderDataset(tmp_path / "v", width=48, height=32, n_sample_frames=4)[0]
    decoded = torch.from_numpy(read_frames(clip, range(4))).permute(0, 3, 1, 2)
    assert torch.equal(item["pixel_values"], decoded / 127.5 - 1.0)


def test_bucket_size_matches_original_formula():
    assert bucket_size(384, 384, 1280, 720) == (384, 256)  # ideal 216; candidates 320, 256
    assert bucket_size(384, 384, 720, 1280) == (256, 384)
    assert bucket_size(384, 384, 500, 500) == (384, 384)
    assert bucket_size(576, 320, 1920, 1080) == (576, 192)  # ideal 180; candidates 256, 192
    assert bucket_size(512, 512, 1280, 720) == (512, 384)  # ideal 288; candidates 448, 384
    assert bucket_size(256, 256, 400, 100) == (256, 192)  # floor 192
    assert bucket_size(64, 64, 96, 64) == (64, 64)  # floor capped at the configured size


def test_bucketing_keeps_orientation(tmp_path):
    synthetic.make_moving_shape_video(tmp_path / "wide" / "a.mp4", frames=4, size=(96, 64))
    synthetic.make_moving_shape_video(tmp_path / "tall" / "a.mp4", frames=4, size=(64, 96))
    wide = VideoFolderDataset(tmp_path / "wide", 256, 256, n_sample_frames=2, use_bucketing=True)[0]
    tall = VideoFolderDataset(tmp_path / "tall", 256, 256, n_sample_frames=2, use_bucketing=True)[0]
    assert wide["pixel_values"].shape[-2:] == (192, 256)
    assert tall["pixel_values"].shape[-2:] == (256, 192)


@pytest.mark.parametrize("bucketing, expected", [(True, (256, 384)), (False, (384, 384))])
def test_single_video_bucketing_as_the_original(tmp_path, bucketing, expected):
    """A 16:9 clip at 384x384 trains at 384x256 (the original's sensible_buckets with the true w, h)."""
    clip = synthetic.make_moving_shape_video(tmp_path / "wide.mp4", frames=4, size=(160, 90))
    dataset = SingleVideoDataset(str(clip), "p", width=384, height=384, n_sample_frames=2, use_bucketing=bucketing)
    assert dataset[0]["pixel_values"].shape[-2:] == expected


# ---------------------------------------------------------------- the other dataset types

def test_single_video_chunks(tmp_path, caplog):
    clip = synthetic.make_index_video(tmp_path / "count.mp4", frames=20, size=32)
    with caplog.at_level(logging.WARNING):
        dataset = SingleVideoDataset(str(clip), "A prompt.", width=16, height=16, n_sample_frames=4, frame_step=2)
    assert len(dataset) == 3 and "last chunk" in caplog.text
    assert [frame_levels(dataset[i]["pixel_values"]) for i in range(3)] == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    item = dataset[0]
    assert item["pixel_values"].shape == (4, 3, 16, 16)
    assert (item["prompt"], item["dataset"]) == ("A prompt.", "single_video")


def test_image_dataset(tmp_path):
    with_caption = synthetic.make_image(tmp_path / "img" / "a.png", size=(80, 60))
    synthetic.write_caption(with_caption, "A red circle.")
    synthetic.make_image(tmp_path / "img" / "b.jpg", size=(60, 80))
    (tmp_path / "img" / "notes.md").write_text("not an image")
    dataset = ImageDataset(str(tmp_path / "img"), width=64, height=48, fallback_prompt="fallback")
    assert len(dataset) == 2
    item = dataset[0]
    assert item["pixel_values"].shape == (16, 3, 48, 64) and item["dataset"] == "image"
    assert torch.equal(item["pixel_values"][0], item["pixel_values"][15])  # a still clip, as the original
    assert -1 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
    assert [dataset[i]["prompt"] for i in range(2)] == ["A red circle.", "fallback"]
    # a set single_img_prompt wins over captions, as in the original
    dataset = ImageDataset(str(tmp_path / "img"), single_img_prompt="Shared.", use_bucketing=True,
                           width=256, height=256)
    assert [dataset[i]["prompt"] for i in range(2)] == ["Shared.", "Shared."]
    assert dataset[1]["pixel_values"].shape == (16, 3, 256, 192)


def test_json_dataset(tmp_path):
    synthetic.make_index_video(tmp_path / "videos" / "count.mp4", frames=16, size=32)
    synthetic.make_index_video(tmp_path / "clips" / "clip.mp4", frames=8, size=32)
    layout = {"data": [{"video_path": "videos/count.mp4", "data": [
        {"frame_index": 0, "prompt": "first"},
        {"frame_index": 6, "prompt": "second"},
        {"frame_index": 3, "prompt": "pre-cut", "clip_path": str(tmp_path / "clips" / "clip.mp4")}]}]}
    (tmp_path / "blip.json").write_text(json.dumps(layout))
    dataset = VideoJsonDataset(str(tmp_path / "blip.json"), width=32, height=32, n_sample_frames=4, frame_step=2)
    items = [dataset[i] for i in range(len(dataset))]
    assert [item["prompt"] for item in items] == ["first", "second", "pre-cut"]
    assert [frame_levels(item["pixel_values"]) for item in items] == [[0, 2, 4, 6], [6, 8, 10, 12], [1, 3, 5, 7]]
    assert items[0]["dataset"] == "json"
    # the same layout given inline
    inline = VideoJsonDataset(json_data={"data": [{"video_path": str(tmp_path / "videos/count.mp4"),
                                                   "data": [{"frame_index": 2, "prompt": "p"}]}]})
    assert len(inline) == 1 and inline[0]["pixel_values"].shape == (4, 3, 256, 256)
    (tmp_path / "bad.json").write_text('{"data": [{"data": [{"frame_index": 0, "prompt": "p"}]}]}')
    with pytest.raises(UserError, match="lacks key 'video_path'"):
        VideoJsonDataset(str(tmp_path / "bad.json"))


# ---------------------------------------------------------------- build_dataset and errors

@dataclass
class TrainData:  # stands in for the project's typed config
    path: str
    image_dir: str
    width: int = 32
    height: int = 32
    n_sample_frames: int = 4
    fallback_prompt: str = "fallback"


def test_build_dataset_from_configs(tmp_path):
    synthetic.make_moving_shape_video(tmp_path / "v" / "a.mp4", frames=8, size=32)
    synthetic.make_image(tmp_path / "img" / "a.png", size=32)
    config = TrainData(path=str(tmp_path / "v"), image_dir=str(tmp_path / "img"))
    dataset = build_dataset(config, ["folder", "image"])
    assert isinstance(dataset, ConcatDataset) and len(dataset) == 2
    assert [dataset[i]["dataset"] for i in range(2)] == ["image", "folder"]  # the original's order
    omega = OmegaConf.create({"path": str(tmp_path / "v"), "width": 16, "height": 16, "n_sample_frames": 2})
    single = build_dataset(omega, ["folder"])
    assert isinstance(single, VideoFolderDataset) and single[0]["pixel_values"].shape == (2, 3, 16, 16)


def test_dataset_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no videos .* in .*empty"):
        build_dataset({"path": str(tmp_path / "empty")}, ["folder"])
    with pytest.raises(UserError, match=r"folder .*nowhere not found"):
        build_dataset({"image_dir": str(tmp_path / "nowhere")}, ["image"])
    with pytest.raises(UserError, match="unknown dataset type.*videos.*valid types: json, single_video, image, folder"):
        build_dataset({}, ["videos"])
    with pytest.raises(UserError, match="single_video_path is not set"):
        build_dataset({}, ["single_video"])
    corrupt = tmp_path / "bad" / "x.mp4"
    corrupt.parent.mkdir()
    corrupt.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(UserError, match="cannot decode video .*x.mp4"):
        build_dataset({"path": str(corrupt.parent)}, ["folder"])
    with pytest.raises(UserError, match="json_path: file .*missing.json not found"):
        build_dataset({"json_path": str(tmp_path / "missing.json")}, ["json"])


def test_sample_data_cli(tmp_path):
    synthetic.main([str(tmp_path)])
    assert video_info(tmp_path / "moving_square" / "moving_square.mp4") == (16, 8.0, 128, 128)
    assert video_info(tmp_path / "zoom_in" / "zoom_in.mp4").num_frames == 24
    assert (tmp_path / "moving_square" / "moving_square.txt").read_text().strip() == "A square is moving to the right."
    assert len(build_dataset({"path": str(tmp_path / "multi_moving")}, ["folder"])) == 3
    assert len(build_dataset({"image_dir": str(tmp_path / "images_multi")}, ["image"])) == 2
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 300_000


# ---------------------------------------------------------------- against the original code's outputs

def test_single_video_matches_original():
    clip = COMPAT / "train_video" / "car-turn-64x64-8f.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} not present")
    config = OmegaConf.create({"width": 64, "height": 64, "use_bucketing": True, "n_sample_frames": 8,
                               "frame_step": 1, "single_video_path": str(clip),
                               "single_video_prompt": "A car is running on the road."})
    dataset = build_dataset(config, ["single_video"])
    assert len(dataset) == 1
    pixels = dataset[0]["pixel_values"]
    decoded = torch.from_numpy(read_frames(clip, range(8))).permute(0, 3, 1, 2)
    assert torch.equal(pixels, decoded / 127.5 - 1.0)
    cached = COMPAT / "cached_latents" / "cached_0.pt"
    if cached.is_file():  # the original's own dataset output, saved with its cached latents
        original = torch.load(cached, map_location="cpu", weights_only=False)
        assert torch.equal(pixels, original["pixel_values"])
        assert dataset[0]["prompt"] == original["text_prompt"]
