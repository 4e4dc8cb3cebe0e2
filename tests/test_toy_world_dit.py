"""The toy world's DiT base: 9-frame clips, the Wan-architecture pretraining, and the experiment's setup."""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.toy_world import world
from utils.toy_world.score import score_clip

REPO = Path(__file__).resolve().parents[1]
SHIPPED_DIT = REPO / "models" / "toy_world_dit"


def test_nine_frame_clips_keep_the_world_and_its_targets():
    """At 9 frames the clock bar still ends full width, the background still ramps, the zig still flips
    every frame, and the detector reads the clip exactly."""
    spec = world.centered_spec("square", "blue", "zigzag", frames=world.DIT_FRAMES)
    video = world.render(spec, world.DIT_FRAMES)
    assert video.shape == (9, world.SIZE, world.SIZE, 3)
    bar = [(frame[0] == world.CLOCK_COLOR).all(axis=-1).sum() for frame in video]
    assert bar[0] == round(world.SIZE / 9) and bar[-1] == world.SIZE and np.all(np.diff(bar) > 0)
    track = world.trajectory(spec, world.DIT_FRAMES)
    assert np.allclose(np.diff(track[:, 0]), world.TRAVEL / 8)  # 24 px right over the clip
    assert np.allclose(np.abs(np.diff(track[:, 1])), 2 * world.ZIGZAG_AMPLITUDE)  # the height flips every frame
    score = score_clip(video, "square", "blue", "zigzag")
    assert score.color_ok and score.shape_ok and score.trajectory_distance < 1.1
    for member_spec in world.family_specs(1, seed=2, frames=world.DIT_FRAMES):
        track = world.trajectory(member_spec, world.DIT_FRAMES)
        assert (track[:, :2] - track[:, 2:] >= 0).all() and (track[:, :2] + track[:, 2:] < world.SIZE).all()


def test_bundled_dit_reference_clips_match_the_generator(tmp_path):
    from utils.io.video_io import read_frames

    bundled = REPO / "test_data" / "toy_world_dit"
    fresh = world.write_reference_clips(tmp_path, world.DIT_FRAMES)
    assert sorted(p.relative_to(tmp_path) for p in fresh) == sorted(p.relative_to(bundled) for p in bundled.rglob("*.mp4"))
    for path in bundled.rglob("*/single/*.mp4"):
        video = read_frames(path, range(world.DIT_FRAMES))
        assert len(video) == world.DIT_FRAMES
        assert score_clip(video, "square", "blue", path.parent.parent.name).trajectory_distance < 3.0


def test_make_data_writes_every_subject_at_the_frame_count_asked(tmp_path):
    """`make-data --new --frames 9`: one clip per shape x colour x new motion, 9 frames each (the
    DiT base's), captioned as the world captions them."""
    from utils.io.video_io import video_info
    from utils.toy_world.__main__ import main

    main(["make-data", str(tmp_path), "--per-combination", "1", "--new", "--frames", str(world.DIT_FRAMES)])
    clips = sorted(tmp_path.glob("*.mp4"))
    assert len(clips) == len(world.SHAPES) * len(world.COLORS) * len(world.NEW_MOTIONS)
    assert {video_info(clip).num_frames for clip in clips} == {world.DIT_FRAMES}
    caption = clips[0].with_suffix(".txt").read_text(encoding="utf8")
    assert caption.split()[1] in world.COLORS and caption.split()[2] in world.SHAPES


def test_dit_pretraining_writes_a_wan_pipeline_and_resumes_exactly(tmp_path):
    """A few steps of both stages write a WanPipeline folder the project loads as a Wan base and
    samples 9-frame clips from; a run stopped after one transformer step and resumed ends with the
    same weights as one that ran straight through."""
    from models.bases import load_components
    from utils.toy_world.evaluate import sample_prompt
    from utils.toy_world.experiment import DIT_SETUP, setup_for
    from utils.toy_world.pretrain_dit import DitSettings, pretrain_dit

    settings = DitSettings(vae_steps=2, vae_clips=1, vae_frames=2, steps=2, batch=2, clips_per_family_caption=1,
                           checkpoint_every=1)
    straight = tmp_path / "straight"
    assert pretrain_dit(straight, settings)
    components = load_components(str(straight))
    assert components.base.name == "wan" and setup_for(straight) == DIT_SETUP
    ids = components.tokenizer("a red circle moving left").input_ids
    assert len(ids) == 5 + 1  # a token per caption word, then </s>
    assert len(components.vae.config.latents_std) == 16 and min(components.vae.config.latents_std) > 0
    clip = sample_prompt(components, "a red circle moving left", seed=0, count=1, num_steps=2, guidance_scale=4.0)
    assert clip.shape == (1, world.DIT_FRAMES, world.SIZE, world.SIZE, 3)
    family = torch.load(straight / "checkpoints" / "family_latents.pt", weights_only=True)
    assert tuple(family["latents"].shape) == (72, 16, 5, 8, 8) and len(family["captions"]) == 72  # time halved once
    assert components.base.latent_frames(world.DIT_FRAMES) == 5

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("transformer", "transformer.pt"))
    assert pretrain_dit(resumed, replace(settings, steps=1)) is True
    assert torch.load(resumed / "checkpoints" / "transformer.pt", weights_only=True)["step"] == 1
    # the learning-rate schedule is over `steps`: the resumed run must be asked for the same total
    assert pretrain_dit(resumed, settings)
    ends = [torch.load(d / "checkpoints" / "transformer.pt", weights_only=True) for d in (straight, resumed)]
    for part in ("model", "ema"):
        assert all(torch.equal(ends[0][part][k], ends[1][part][k]) for k in ends[0][part])


@pytest.mark.skipif(not (SHIPPED_DIT / "model_index.json").is_file(), reason="the shipped DiT base is not built")
def test_shipped_dit_base_trains_motiondirector_from_the_dit_config(tmp_path):
    """The experiment's training call on the shipped DiT base: the DiT config and 9-frame reference,
    both LoRA paths on the Wan default layers."""
    from safetensors.torch import load_file

    from utils.toy_world.experiment import train_motiondirector

    run, _ = train_motiondirector(SHIPPED_DIT, "zigzag", seed=0, steps=2, out_dir=tmp_path)
    temporal = load_file(next((run / "temporal" / "lora").glob("*.safetensors")))
    spatial = load_file(next((run / "spatial" / "lora").glob("*.safetensors")))
    assert temporal and all(".attn1." in k for k in temporal)
    assert any(".ffn." in k for k in spatial) and not any(".attn2." in k for k in spatial)


@pytest.mark.skipif(not (SHIPPED_DIT / "model_index.json").is_file(), reason="the shipped DiT base is not built")
def test_shipped_dit_base_samples_the_prompts_direction():
    """The gate found every drift and "standing still" right (120 of 120): a few of them here,
    through the project's sampler, 9 frames each."""
    from utils.toy_world.evaluate import evaluate

    combos = [("circle", "red", "left"), ("triangle", "green", "up"), ("square", "blue", "right"),
              ("circle", "blue", "still")]
    report = evaluate(SHIPPED_DIT, combos, samples_per_prompt=1, num_steps=20, guidance_scale=4.0)
    assert report["summary"]["frames"] == world.DIT_FRAMES
    assert [clip["motion"] for clip in report["clips"]] == [motion for _, _, motion in combos]


@pytest.mark.skipif(not (SHIPPED_DIT / "model_index.json").is_file(), reason="the shipped DiT base is not built")
def test_shipped_dit_vae_keeps_the_circle_frame_by_frame_and_loses_the_zig():
    """The shipped VAE halves time: the circle's centre comes back within 4 px in every frame
    (measured: at most 3.2), while the zig-zag's zig, which turns every frame, is averaged inside
    each pair of frames (measured: 6-10 px off in every frame after the first)."""
    from utils.toy_world.compare import vae_round_trip
    from utils.toy_world.experiment import reference_clips, setup_for

    setup = setup_for(SHIPPED_DIT)
    rows = vae_round_trip(SHIPPED_DIT, [(clip, motion) for motion in ("circling", "zigzag")
                                        for clip in reference_clips(motion, "single", setup)])
    circle, zig = (row["frame_px"] for row in rows)
    assert len(circle) == world.DIT_FRAMES and max(circle) < 4.0
    assert zig[0] < 2.0 and min(zig[1:]) > 4.0
