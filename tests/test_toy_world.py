"""The toy world: generator, detector, scores, pretraining smoke run, and the shipped base model."""

from pathlib import Path

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.toy_world import world
from utils.toy_world.detector import read_clip
from utils.toy_world.score import motion_by_family, motion_class, score_clip, summarize, trajectory_distance

REPO = Path(__file__).resolve().parents[1]
SHIPPED_BASE = REPO / "models" / "toy_world_base"  # v1: straight lines
SHIPPED_V2 = REPO / "models" / "toy_world_v2"  # v2: a family of paths per caption
ALL = world.all_combinations(world.BASE_MOTIONS + world.NEW_MOTIONS)


def _blur(video: np.ndarray) -> np.ndarray:
    """A 5x5 box blur per frame, like the soft edges of a sampled clip."""
    padded = np.pad(video.astype(np.float32), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    out = sum(padded[:, i:i + video.shape[1], j:j + video.shape[2]] for i in range(5) for j in range(5)) / 25
    return out.round().astype(np.uint8)


@pytest.mark.parametrize("shape,color,motion", ALL)
def test_detector_is_exact_on_generated_clips(shape, color, motion):
    rng = np.random.default_rng(len(shape) * 100 + len(color) * 10 + len(motion))
    for spec in (world.centered_spec(shape, color, motion), world.random_spec(rng, shape, color, motion)):
        video = world.render(spec)
        reading = read_clip(video)
        assert (reading.color, reading.shape) == (color, shape)
        # the bounding box of a pixelated shape is within a pixel of the drawn one
        assert np.abs(reading.track - world.trajectory(spec)).max() <= 1.0
        score = score_clip(video, shape, color, motion)
        assert score.trajectory_distance < 1.1
        if motion in world.BASE_MOTIONS:
            assert score.motion_ok and score.motion == motion


def test_new_motions_are_far_from_each_other_and_from_straight_motions():
    tracks = {m: world.offsets(m) for m in world.BASE_MOTIONS + world.NEW_MOTIONS}
    for new in world.NEW_MOTIONS:
        for other, track in tracks.items():
            if other != new:
                assert trajectory_distance(track, tracks[new]) > 4.0, (new, other)


def test_targets_are_members_of_their_families_by_hand():
    """The zig-zag is "moving right" with the height flipping every frame (7 px up first); circling
    is a loop of radius 11 from the top, clockwise on screen (v1's definitions, kept)."""
    frames = np.arange(world.FRAMES)
    zigzag = world.offsets("zigzag")
    assert np.allclose(zigzag[:, 0], world.TRAVEL * frames / (world.FRAMES - 1))
    assert np.allclose(zigzag[:, 1], 7.0 * np.where(frames % 2 == 0, -1.0, 1.0))
    angle = 2 * np.pi * frames / world.FRAMES
    assert np.allclose(world.offsets("circling")[:, :2], np.stack([11 * np.sin(angle), -11 * np.cos(angle)], -1))
    assert np.allclose(world.offsets("right", member=world.TARGET_MEMBERS["zigzag"]), zigzag)
    # a drift's wiggle runs across it; a counter-clockwise loop mirrors a clockwise one
    up = world.offsets("up", member=world.Member("sine", 4.0, 4, 0.25))
    assert np.allclose(up[:, 0], 4.0 * np.cos(np.pi * frames / 2)) and np.allclose(up[:, 1], -world.TRAVEL * frames / 7)
    ccw = world.offsets("loop", member=world.Member("loop", 11.0, clockwise=False))
    assert np.allclose(ccw[:, 0], -world.offsets("circling")[:, 0]) and np.allclose(ccw[:, 1], world.offsets("circling")[:, 1])
    assert world.caption("circle", "red", "zigzag") == "a red circle moving right"
    assert world.caption("circle", "red", "circling") == world.caption("circle", "red", "loop") == "a red circle moving in a circle"


def test_family_members_stay_inside_and_the_detector_reads_their_family():
    """Random members of every family: drawn inside the frame, read to within a pixel, and their
    motion class is their family (loops by their sweep, drifts by their line fit)."""
    from utils.toy_world.score import fit_circle, wiggle

    specs = world.family_specs(2, seed=11)
    assert len(specs) == 2 * len(world.SHAPES) * len(world.COLORS) * len(world.FAMILIES)
    assert specs == world.family_specs(2, seed=11) and specs != world.family_specs(2, seed=12)
    kinds = {s.member.kind for s in specs if s.member}
    assert kinds == {"straight", "sine", "zigzag", "arc", "loop"}
    for spec in specs:
        track = world.trajectory(spec)
        assert (track[:, :2] - track[:, 2:] >= 0).all() and (track[:, :2] + track[:, 2:] <= world.SIZE - 1).all()
        video = world.render(spec)
        reading = read_clip(video)
        assert np.abs(reading.track - track).max() <= 1.0
        score = score_clip(video, spec.shape, spec.color, spec.motion)
        assert score.motion == spec.motion, spec
        if spec.member and spec.member.kind == "loop":
            radius, sweep = fit_circle(track)
            assert radius == pytest.approx(spec.member.amplitude) and (sweep > 0) == spec.member.clockwise
        elif spec.member and spec.member.kind == "straight":
            assert wiggle(track) < 1e-9


def test_a_caption_leaves_the_target_member_unlikely():
    """Drawn from its family, a caption's path rarely lands within CLOSE_ENOUGH of the target
    member (what a base that samples its family faithfully would score): under 5%."""
    from utils.toy_world.experiment import CLOSE_ENOUGH

    rng = np.random.default_rng(0)
    for target, family in world.TARGET_FAMILY.items():
        reference = world.offsets(target)
        distances = [trajectory_distance(world.offsets(family, member=world.random_member(rng, family)), reference)
                     for _ in range(2000)]
        assert 0.005 < np.mean(np.array(distances) < CLOSE_ENOUGH) < 0.05, target


@pytest.mark.parametrize("motion", world.BASE_MOTIONS + world.NEW_MOTIONS)
def test_detector_reads_blurred_clips(motion):
    for shape in world.SHAPES:
        color = "yellow" if shape == "triangle" else "blue"
        video = _blur(world.render(world.centered_spec(shape, color, motion)))
        score = score_clip(video, shape, color, motion)
        assert score.color_ok and score.shape_ok, score
        assert score.trajectory_distance < 3.5  # a blurred triangle's base corners fade: ~2 px narrower
        if motion in world.BASE_MOTIONS:
            assert score.motion_ok


def test_shape_vote_ties_go_to_the_better_fit_in_any_order():
    """The frames' shape vote: the majority wins; a tie goes to the larger summed IoU. (The vote
    was max over a set of names: a tie then fell to the process's string-hash seed.)"""
    from utils.toy_world.detector import majority_shape

    tie = [("circle", 0.9), ("square", 0.7), ("circle", 0.8), ("square", 0.95)]  # 2 : 2, IoU 1.70 : 1.65
    assert majority_shape(tie) == majority_shape(tie[::-1]) == "circle"
    assert majority_shape([("triangle", 0.5)] * 3 + [("circle", 0.99)] * 2) == "triangle"


def test_mp4_round_trip_keeps_the_reading(tmp_path):
    from utils.io.video_io import read_frames

    spec = world.ClipSpec("triangle", "green", "down", (30.0, 15.0))
    path = world.write_clip(spec, tmp_path)
    assert path.with_suffix(".txt").read_text(encoding="utf8").strip() == "a green triangle moving down"
    video = read_frames(path, range(world.FRAMES))
    score = score_clip(video, "triangle", "green", "down")
    assert score.color_ok and score.shape_ok and score.motion_ok and score.trajectory_distance < 3.0


def test_bundled_reference_clips_match_the_generator(tmp_path):
    from utils.toy_world.evaluate import parse_caption
    from utils.io.video_io import read_frames

    bundled = REPO / "test_data" / "toy_world"
    fresh = world.write_reference_clips(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in fresh) == sorted(
        p.relative_to(bundled) for p in bundled.rglob("*.mp4"))
    for path in bundled.rglob("*/single/*.mp4"):
        shape, color, family = parse_caption(path.with_suffix(".txt").read_text(encoding="utf8"))
        motion = path.parent.parent.name  # the target; the caption names its family
        assert family == world.TARGET_FAMILY.get(motion, motion)
        score = score_clip(read_frames(path, range(world.FRAMES)), shape, color, motion)
        assert score.color_ok and score.shape_ok and score.trajectory_distance < 3.0, (path, score)


def test_specs_are_deterministic_and_clips_stay_inside():
    specs = world.sample_specs(2, seed=3, motions=world.BASE_MOTIONS + world.NEW_MOTIONS)
    assert specs == world.sample_specs(2, seed=3, motions=world.BASE_MOTIONS + world.NEW_MOTIONS)
    assert specs != world.sample_specs(2, seed=4, motions=world.BASE_MOTIONS + world.NEW_MOTIONS)
    assert len(specs) == 2 * len(world.SHAPES) * len(world.COLORS) * 9
    for spec in specs:
        track = world.trajectory(spec)
        assert (track[:, :2] - track[:, 2:] >= 0).all() and (track[:, :2] + track[:, 2:] <= world.SIZE - 1).all()
    assert world.caption("circle", "red", "left") == "a red circle moving left"


def test_clip_size_is_the_drawn_half_width_and_pools_by_drawn_shape():
    from dataclasses import replace

    from utils.toy_world.score import size_by_shape

    square = score_clip(world.render(world.centered_spec("square", "blue", "right")), "square", "blue", "right")
    assert square.size == pytest.approx(world.RADIUS)  # the generator's half-width, read back exactly
    wider = replace(square, size=14.0)
    wrong_shape = replace(square, shape_ok=False, size=30.0)  # drawn as another shape: not pooled
    assert size_by_shape([square, wider, wrong_shape]) == {
        "square": {"clips": 2, "size_mean": pytest.approx(12.5), "size_std": pytest.approx(1.5)}}


def test_motion_class_and_distance_by_hand():
    frames = np.arange(8)
    track = np.stack([10 + 2.0 * frames, 30 + 0.5 * frames, np.full(8, 9.0)], -1)  # dx 14, dy 3.5
    assert motion_class(track) == "right"
    assert motion_class(np.stack([20 - 0.5 * frames, 30 - 3.0 * frames, np.full(8, 9.0)], -1)) == "up"
    assert motion_class(np.stack([20 + 0.5 * frames, 30 + 0.5 * frames, np.full(8, 9.0)], -1)) == "still"
    # a track shifted by (5, 5) with a radius 1.5 larger is 3 pixels (of diameter) away once centred
    shifted = track + [5.0, 5.0, 1.5]
    assert trajectory_distance(shifted, track) == pytest.approx(3.0)
    assert trajectory_distance(shifted, track, with_size=False) == pytest.approx(0.0, abs=1e-12)  # the path alone
    missing = track.copy()
    missing[2] = np.nan
    assert trajectory_distance(missing, track) == 64.0
    assert motion_class(missing) == "right"


def test_summarize_counts():
    video = world.render(world.centered_spec("square", "red", "left"))
    good = score_clip(video, "square", "red", "left")
    bad = score_clip(video, "circle", "red", "up")
    summary = summarize([good, bad])
    assert summary["color_accuracy"] == 1.0 and summary["shape_accuracy"] == 0.5
    assert summary["motion_accuracy"] == 0.5
    by_family = motion_by_family([good, bad, good], ["left", "up", "left"])
    assert by_family == {"left": {"right": 2, "clips": 2}, "up": {"right": 0, "clips": 1}}


def test_pretrain_smoke_writes_a_loadable_pipeline(tmp_path):
    from models.bases import load_components
    from utils.toy_world.pretrain import PretrainSettings, pretrain

    settings = PretrainSettings(vae_steps=1, vae_batch=2, binding_steps=1, unet_steps=1, unet_batch=2, rehearsal_per_batch=1,
                                clips_per_combination=1, checkpoint_every=1)
    assert pretrain(tmp_path / "base", settings)
    components = load_components(str(tmp_path / "base"))
    ids = components.tokenizer("a red circle moving left").input_ids
    assert len(ids) == 2 + 5  # every caption word is one token
    assert components.vae.config.scaling_factor > 0
    assert (tmp_path / "base" / "checkpoints" / "unet.pt").is_file()
    # the evaluation samples through the project's sampler and scores every clip
    from utils.toy_world.evaluate import evaluate

    report = evaluate(tmp_path / "base", [("circle", "red", "left")], samples_per_prompt=2, num_steps=2,
                      video_dir=tmp_path / "samples")
    assert report["summary"]["clips"] == 2 and len(list((tmp_path / "samples").glob("*.mp4"))) == 2
    # the caption probe: a loss ratio per swapped caption part and timestep
    from utils.toy_world.evaluate import caption_reliance

    probe = caption_reliance(tmp_path / "base", timesteps=(500,), combos=[("circle", "red", "left")] * 2)
    assert set(probe[500]) == {"motion", "color", "shape"} and all(r > 0 for r in probe[500].values())
    # the conditional layout: a centroid per frame for each prompt
    from utils.toy_world.evaluate import conditional_layout

    layouts = conditional_layout(tmp_path / "base", ["a red circle moving left", "a red circle moving up"], seeds=2)
    assert [c.shape for c in layouts.values()] == [(world.FRAMES, 2)] * 2
    assert all(np.isfinite(c).all() for c in layouts.values())
    # frame-order use: a fresh UNet3D's temporal convs start as the identity (zero last conv) and its
    # temporal attention ignores order, so it treats a clip as a set of frames; random temporal
    # convs make it order-dependent
    from diffusers import UNet3DConditionModel

    from utils.toy_world.evaluate import order_use
    from utils.toy_world.pretrain import UNET_CONFIG

    torch.manual_seed(0)
    unet = UNet3DConditionModel(**UNET_CONFIG)
    unet.save_pretrained(tmp_path / "base" / "unet")
    assert max(order_use(tmp_path / "base", timesteps=(500, 950)).values()) < 0.01
    for module in unet.modules():
        if module.__class__.__name__ == "TemporalConvLayer":
            torch.nn.init.normal_(module.conv4[-1].weight, std=0.1)
    unet.save_pretrained(tmp_path / "base" / "unet")
    assert min(order_use(tmp_path / "base", timesteps=(500, 950)).values()) > 0.05
    # a run stopped at the end of the binding stage and resumed ends with the same weights as one
    # that ran straight through (the main stage starts with a fresh optimizer either way)
    import shutil
    from dataclasses import replace

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "base", resumed, ignore=shutil.ignore_patterns("unet", "unet.pt"))
    assert pretrain(resumed, replace(settings, unet_steps=0))
    assert torch.load(resumed / "checkpoints" / "unet.pt", weights_only=False)["step"] == 1
    assert pretrain(resumed, settings)
    straight, stopped = (torch.load(d / "checkpoints" / "unet.pt", weights_only=False)
                         for d in (tmp_path / "base", resumed))
    for part in ("model", "ema"):
        assert all(torch.equal(straight[part][k], stopped[part][k]) for k in straight[part])
    assert not torch.equal(straight["model"]["conv_in.weight"], stopped["ema"]["conv_in.weight"])
    # the vocabulary stage (v2): run on in place, or from the finished base with --init-from (which
    # takes its VAE, text parts and EMA UNet): the same weights either way
    vocabulary = replace(settings, vocabulary_steps=2, clips_per_family_caption=1)
    initialised = tmp_path / "v2"
    assert pretrain(initialised, replace(vocabulary, init_from=str(resumed)))  # (base/unet holds the probes' UNets)
    assert pretrain(resumed, vocabulary)
    on, init = (torch.load(d / "checkpoints" / "unet.pt", weights_only=False) for d in (resumed, initialised))
    assert on["step"] == init["step"] == vocabulary.total_unet_steps
    for part in ("model", "ema"):
        assert all(torch.equal(on[part][k], init[part][k]) for k in on[part])
    assert not torch.equal(on["model"]["conv_in.weight"], straight["model"]["conv_in.weight"])
    family = torch.load(initialised / "checkpoints" / "family_latents.pt")
    assert len(family["latents"]) == 72 and len(family["captions"]) == 72


def test_contrast_centroids_follow_the_subject_on_a_ramped_background():
    from utils.toy_world.evaluate import contrast_centroids

    for motion in ("right", "down", "circling"):
        spec = world.centered_spec("square", "green", motion)
        centroids = contrast_centroids(world.render(spec))
        assert np.abs(centroids - world.trajectory(spec)[:, :2]).max() < 0.6


def test_binding_word_sets_differ_in_that_word_only():
    from utils.toy_world.binding import WORDS, word_specs

    for word in WORDS:
        captions = [s.caption.split() for s in word_specs(word)]
        differing = {i for i in range(len(captions[0])) if len({c[i] for c in captions}) > 1}
        assert len(differing) == 1 and len(captions) >= 2
    assert [s.motion for s in word_specs("sign")] == ["left", "right"]


def test_parse_caption_inverts_caption():
    from utils.toy_world.evaluate import parse_caption

    for shape, color, motion in world.all_combinations(world.FAMILIES + world.HELD_OUT):
        assert parse_caption(world.caption(shape, color, motion)) == (shape, color, motion)
    # a target member's caption is its family's
    assert parse_caption(world.caption("circle", "red", "zigzag")) == ("circle", "red", "right")
    assert parse_caption("A Blue square moving in a circle.") == ("square", "blue", "loop")
    with pytest.raises(ValueError, match="not a toy-world caption"):
        parse_caption("a purple circle moving left")


def _shipped_or_skip(base: Path = SHIPPED_BASE) -> Path:
    if not (base / "model_index.json").is_file():
        pytest.skip(f"{base} is not shipped in this checkout")
    return base


def test_shipped_v2_base_samples_every_family():
    """Through the project's sampler, a red square in every family (left, right, up, down, a loop,
    still): seeds 0-3 each gave 6 of 6 families and the right subject; the gate over 144 clips
    reads loops right in 16 of 24 (docs/toy_world.md), so one miss is allowed."""
    from models.bases import load_components
    from utils.inference.generate import GenerationSettings, sample_video

    components = load_components(str(_shipped_or_skip(SHIPPED_V2)))
    families_right = 0
    for motion in world.FAMILIES:
        settings = GenerationSettings(prompt=world.caption("square", "red", motion), width=world.SIZE,
                                      height=world.SIZE, num_frames=world.FRAMES, num_steps=20, guidance_scale=4.0)
        score = score_clip(sample_video(components, settings, seed=0, inverted=None)[0].numpy(), "square", "red", motion)
        assert score.color_ok and score.shape_ok, motion
        families_right += score.motion_ok
    assert families_right >= 5


def test_shipped_base_samples_the_prompts_subject_and_motion():
    """Through the project's sampler, one subject in every base motion (the gate, on 5 clips)."""
    from models.bases import load_components
    from utils.inference.generate import GenerationSettings, sample_video

    components = load_components(str(_shipped_or_skip()))
    motions_right = 0
    for motion in world.BASE_MOTIONS:
        settings = GenerationSettings(prompt=world.caption("square", "red", motion), width=world.SIZE,
                                      height=world.SIZE, num_frames=world.FRAMES, num_steps=20, guidance_scale=4.0)
        frames = sample_video(components, settings, seed=0, inverted=None)
        assert tuple(frames.shape) == (1, world.FRAMES, world.SIZE, world.SIZE, 3)
        score = score_clip(frames[0].numpy(), "square", "red", motion)
        assert score.color_ok and score.shape_ok, motion
        motions_right += score.motion_ok
    assert motions_right >= 4


def test_short_training_on_the_shipped_base_moves_its_reference_subject_in_a_circle(tmp_path):
    """MotionDirector_train.py (the toy config, 300 steps) on the bundled circling clip (a blue
    square, "moving in a circle": one radius and start of the v2 base's loop family); the reference
    subject, sampled with its own caption and the temporal LoRA alone (as MotionDirector samples),
    comes nearer the circle than without it. Not new subjects: on them 300 steps change nothing
    measurable (docs/toy_world.md)."""
    from utils.toy_world.experiment import (Sampling, reference_subjects, sample_subjects, sampling_model,
                                            scored_distances, train_motiondirector)

    base = _shipped_or_skip(SHIPPED_V2)
    run, _ = train_motiondirector(base, "circling", seed=0, steps=300, out_dir=tmp_path)
    assert (run / "temporal" / "lora" / "300_unet.safetensors").is_file()
    sampling = Sampling(seeds=(0, 1), num_steps=20)
    distance = {}
    for name, lora_run in (("base", None), ("motiondirector", run)):
        clips, _ = sample_subjects(sampling_model(base, lora_run), "circling", reference_subjects("circling"), sampling)
        distance[name] = float(scored_distances(clips, "circling")[1].mean())
    assert distance["motiondirector"] < distance["base"] - 4.0, distance


def test_experiment_row_scores_motion_appearance_and_leakage():
    from utils.toy_world.experiment import new_subjects, score_row

    references = [("square", "blue")]
    subjects = new_subjects(references)
    assert len(subjects) == 2 * 3 and all(s != "square" and c != "blue" for s, c in subjects)
    reference = world.render(world.centered_spec("square", "blue", "zigzag"))
    faithful = [((s, c), 0, world.render(world.centered_spec(s, c, "zigzag"))) for s, c in subjects]
    row = score_row("ideal", "zigzag", references, reference, faithful, 1.0, 2.0)
    assert row["motion_hit_rate"] == 1.0 and row["appearance_accuracy"] == 1.0 and row["leakage"] == 0.0
    assert row["motion_fidelity"] > 90  # percent: the same motion on other subjects
    # the reference subject drawn instead of the prompt's: all appearance wrong, all leaked
    copies = [((s, c), 0, reference) for s, c in subjects]
    row = score_row("copycat", "zigzag", references, reference, copies, 1.0, 2.0)
    assert row["appearance_accuracy"] == 0.0 and row["leakage"] == 1.0 and row["motion_hit_rate"] == 1.0
    # the right subject going left is far from the zigzag
    wrong = [((s, c), 0, world.render(world.centered_spec(s, c, "left"))) for s, c in subjects]
    row = score_row("wrong", "zigzag", references, reference, wrong, 1.0, 2.0)
    assert row["motion_hit_rate"] == 0.0 and row["motion_fidelity"] < 10


def test_experiment_loop_passes_overrides_and_scores_the_reference_subjects(tmp_path, monkeypatch):
    """run_experiment's wiring, with training and sampling replaced by the world's own clips: each
    variant gets its overrides then --set's, the noise-prior rows come from MotionDirector's run, each
    --lora-scales row from its variant's run at that scale, and every row scores its reference
    subject (here drawn doing the motion: 0 px) apart from the new ones."""
    import json

    from utils.toy_world import experiment

    trained = []

    def fake_train(base, motion, seed, steps, out_dir, overrides=(), mode="single", setup=None):
        trained.append((Path(out_dir).name, overrides))
        return Path(out_dir), 1.0

    def fake_sample(model, motion, subjects, sampling, noise_prior=0.0):
        drawn = "left" if model is None else motion  # the "base" draws the wrong motion
        return [((s, c), seed, world.render(world.centered_spec(s, c, drawn))) for s, c in subjects
                for seed in sampling.seeds], 2.0

    monkeypatch.setattr(experiment, "train_motiondirector", fake_train)
    sampled_at = []

    def fake_model(base, run, noise_prior=0.0, lora_scale=1.0):
        sampled_at.append((run and run.name, noise_prior, lora_scale))
        return run

    monkeypatch.setattr(experiment, "sampling_model", fake_model)
    monkeypatch.setattr(experiment, "sample_subjects", fake_sample)
    rows = experiment.run_experiment(SHIPPED_V2, tmp_path, ["zigzag"], ["single"], [0], 5,
                                     experiment.Sampling(seeds=(0,), subjects=2), overrides=("lora_rank=4",),
                                     lora_scales=(2.0,))
    assert trained == [("motiondirector_seed0", ("lora_rank=4",)),
                       ("coupled_seed0", (*experiment.VARIANTS["coupled"], "lora_rank=4")),
                       ("no_debias_seed0", (*experiment.VARIANTS["no_debias"], "lora_rank=4"))]
    assert [r["row"] for r in rows] == ["base", "motiondirector", "motiondirector_ls2", "motiondirector_np0.3",
                                        "motiondirector_np0.5", "coupled", "coupled_ls2", "no_debias", "no_debias_ls2"]
    assert sampled_at == [(None, 0.0, 1.0), ("motiondirector_seed0", 0.0, 1.0), ("motiondirector_seed0", 0.0, 2.0),
                          ("motiondirector_seed0", 0.3, 1.0), ("motiondirector_seed0", 0.5, 1.0),
                          ("coupled_seed0", 0.0, 1.0), ("coupled_seed0", 0.0, 2.0),
                          ("no_debias_seed0", 0.0, 1.0), ("no_debias_seed0", 0.0, 2.0)]
    base, *trained_rows = rows
    assert base["reference_subject_distance"] > 10 and base["motion_hit_rate"] == 0.0
    written = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text(encoding="utf8").splitlines()]
    assert written == [{k: v for k, v in r.items() if k != "samples"} for r in rows]  # row by row, as scored
    assert all(r["reference_subject_distance"] < 1.0 and r["motion_hit_rate"] == 1.0 for r in trained_rows)
    # each clip's distance is kept: 2 new subjects x 1 seed, 1 reference subject x 1 seed
    assert base["reference_subject_hit_rate"] == 0.0 and all(r["reference_subject_hit_rate"] == 1.0 for r in trained_rows)
    assert all(len(r["distances"]) == 2 and len(r["reference_subject_distances"]) == 1 for r in rows)
    assert rows[1]["clip_subjects"] == ["red circle", "red triangle"]  # the first two pairs sharing nothing
    assert rows[1]["reference_subject_clip_subjects"] == ["blue square"]
    # the path alone is never farther than path and size; the base's wrong direction misses either way
    assert all(p <= d for r in rows for p, d in zip(r["path_distances"], r["distances"]))
    assert base["path_hit_rate"] == 0.0 and all(r["path_hit_rate"] == 1.0 for r in trained_rows)
    assert np.mean(base["distances"]) == pytest.approx(base["trajectory_distance"], abs=1e-3)


def test_a_finished_training_run_is_reused_with_its_recorded_seconds(tmp_path, monkeypatch):
    from utils.toy_world import experiment

    calls = []

    def fake_run(command, **kwargs):  # what MotionDirector_train.py leaves behind
        calls.append(command)
        (tmp_path / "out" / f"train_{len(calls)}" / "temporal" / "lora").mkdir(parents=True)

    monkeypatch.setattr(experiment.subprocess, "run", fake_run)
    first = experiment.train_motiondirector(SHIPPED_V2, "zigzag", 0, 5, tmp_path / "out")
    assert experiment.train_motiondirector(SHIPPED_V2, "zigzag", 0, 5, tmp_path / "out") == first
    assert len(calls) == 1 and first[0].name == "train_1"
    experiment.train_motiondirector(SHIPPED_V2, "zigzag", 1, 5, tmp_path / "out")  # another seed: trains
    assert len(calls) == 2


def test_other_reference_subjects_reach_training_and_the_new_subjects(tmp_path, monkeypatch):
    from utils.toy_world import experiment
    from utils.toy_world.__main__ import main

    with pytest.raises(UserError, match="bad subject 'hexagon:red'"):
        main(["make-data", str(tmp_path / "bad"), "--reference", "--reference-subjects", "hexagon:red"])
    written = world.write_reference_clips(tmp_path / "refs", subjects=[("circle", "yellow"), ("square", "blue")])
    assert sorted(p.relative_to(tmp_path / "refs").as_posix() for p in written if "circling" in str(p)) == [
        "circling/multi/blue_square_circling_32_32.mp4", "circling/multi/yellow_circle_circling_32_32.mp4",
        "circling/single/yellow_circle_circling_32_32.mp4"]
    setup = experiment.setup_for(SHIPPED_V2, tmp_path / "refs")
    references = experiment.reference_subjects("circling", "single", setup)
    assert references == [("circle", "yellow")]
    # new subjects share neither the shape nor the colour: the triangles are among them now
    assert experiment.new_subjects(references, 4) == [("square", "red"), ("triangle", "red"),
                                                      ("square", "green"), ("triangle", "green")]
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        (tmp_path / "out" / "train_1" / "temporal" / "lora").mkdir(parents=True)

    monkeypatch.setattr(experiment.subprocess, "run", fake_run)
    experiment.train_motiondirector(SHIPPED_V2, "circling", 0, 5, tmp_path / "out", setup=setup)
    assert (f"train_data.single_video_path={tmp_path / 'refs' / 'circling' / 'single' / 'yellow_circle_circling_32_32.mp4'}"
            in commands[0]) and "train_data.single_video_prompt=a yellow circle moving in a circle" in commands[0]


def test_an_untrained_lora_leaves_every_subject_as_the_base_has_it(tmp_path, capsys):
    """Known answer: a LoRA trained one step at a learning rate of 1e-30 keeps peft's zero B (to
    ~1e-30), so its response is 0 and the first step's layout is the base's, subject by subject."""
    from utils.toy_world.__main__ import main
    from utils.toy_world.experiment import train_motiondirector
    from utils.toy_world.transfer import subject_responses

    run, _ = train_motiondirector(SHIPPED_V2, "circling", 0, 1, tmp_path / "run", ("learning_rate=1e-30",))
    found = subject_responses(SHIPPED_V2, [run], "circling", [("square", "blue"), ("triangle", "green")])
    assert list(found) == ["blue square", "green triangle"]
    for entry in found.values():
        assert list(entry["response"]) == [999, 800, 500]
        assert all(values == [pytest.approx(0.0, abs=1e-6)] for values in entry["response"].values())
        assert entry["layout_px"] == [pytest.approx(entry["base_layout_px"], rel=1e-5)]
        assert entry["base_layout_px"] > 4.0  # the base does not draw the clip's circle from the start
    main(["response", str(SHIPPED_V2), str(run), "--motion", "circling", "--subjects", "1"])
    assert "blue square" in capsys.readouterr().out


def test_multi_video_subjects_and_leakage():
    from utils.toy_world.experiment import leaked, new_subjects, reference_subjects
    from utils.toy_world.score import score_clip

    references = reference_subjects("zigzag", "multi")
    assert sorted(references) == sorted(world.REFERENCE_SUBJECTS)
    subjects = new_subjects(references)
    assert len(subjects) == 12 - 3 and not set(subjects) & set(references)
    # only a reference subject's exact pair leaks: a yellow circle (a reference) drawn for "a green
    # circle" does; a red circle (red and circle both belong to references, the pair to none) does not
    def drawn(shape, color):
        return score_clip(world.render(world.centered_spec(shape, color, "zigzag")), "circle", "green", "zigzag")

    assert leaked(drawn("circle", "yellow"), ("circle", "green"), references)
    assert not leaked(drawn("circle", "red"), ("circle", "green"), references)
    assert not leaked(drawn("circle", "green"), ("circle", "green"), references)


def test_by_subject_pools_each_subjects_clips_over_seeds():
    """Per-clip figures of two seeds, pooled by subject, counted by hand; rows without them are skipped."""
    from utils.toy_world.table import by_subject, format_by_subject

    def row(seed, distances, paths, own):
        return {"motion": "circling", "mode": "single", "row": "motiondirector", "seed": seed,
                "clip_subjects": ["red circle", "green triangle"], "distances": distances, "path_distances": paths,
                "reference_subject_clip_subjects": ["blue square"], "reference_subject_distances": [own],
                "reference_subject_path_distances": [2.0]}

    rows = [row(0, [3.0, 9.0], [2.0, 8.0], 6.0), row(1, [5.0, 11.0], [3.5, 10.0], 7.0),
            {"motion": "circling", "mode": "single", "row": "motiondirector", "seed": 2}]
    lines = {x["subject"]: x for x in by_subject(rows)}
    assert list(lines) == ["red circle (new)", "green triangle (new)", "blue square (reference)"]
    assert lines["red circle (new)"] | {} == {"motion": "circling", "mode": "single", "row": "motiondirector",
                                              "subject": "red circle (new)", "clips": 2, "distance": 4.0, "hits": 1,
                                              "path_distance": 2.75, "path_hits": 2}
    assert (lines["blue square (reference)"]["hits"], lines["blue square (reference)"]["path_hits"]) == (0, 2)
    assert "| circling | single | motiondirector | green triangle (new) | 2 | 10.00 | 0 | 9.00 | 0 |" in format_by_subject(
        list(lines.values()))


def test_summary_per_motion_and_paired_differences_by_hand(tmp_path, capsys):
    """Each (motion, mode, row) over its seeds; differences against coupled tuning seed by seed,
    with t(0.975, n-1) sd / sqrt(n) intervals, and no_debias against MotionDirector; `table`
    merges runs split by motion."""
    import json

    from utils.toy_world.__main__ import main
    from utils.toy_world.table import all_differences, paired_differences, summarize_rows, t_quantile

    def row(name, motion, seed, distance, hit=0.0):
        scores = dict.fromkeys(("motion_fidelity", "appearance_accuracy", "leakage", "train_s", "sample_s"), 0.0)
        return {"row": name, "motion": motion, "mode": "single", "seed": seed, "trajectory_distance": distance,
                "motion_hit_rate": hit, **scores}

    rows = [row("base", "zigzag", None, 10.0), row("base", "circling", None, 14.0)]
    for seed, (md, coupled) in enumerate([(2.0, 3.0), (4.0, 6.0), (3.0, 6.0)]):
        rows += [row("motiondirector", "zigzag", seed, md, 0.5), row("coupled", "zigzag", seed, coupled),
                 row("motiondirector", "circling", seed, 5.0), row("coupled", "circling", seed, 5.0)]
    rows += [row("no_debias", "circling", seed, distance) for seed, distance in enumerate([6.0, 8.0])]
    summary = summarize_rows(rows)
    assert [(s["motion"], s["row"]) for s in summary] == [
        ("zigzag", "base"), ("zigzag", "motiondirector"), ("zigzag", "coupled"),
        ("circling", "base"), ("circling", "motiondirector"), ("circling", "coupled"), ("circling", "no_debias")]
    md = summary[1]
    assert md["trajectory_distance"] == 3.0 and md["trajectory_distance_std"] == pytest.approx(np.sqrt(2 / 3))
    assert summary[0]["seeds"] == 0 and md["seeds"] == 3
    differences = {(d["motion"], d["row"]): d for d in paired_differences(rows)}
    # md - coupled per seed: -1, -2, -3: mean -2, sd 1, interval 4.303 / sqrt(3)
    zig = differences[("zigzag", "motiondirector")]
    assert zig["trajectory_distance"] == pytest.approx(-2.0)
    assert zig["trajectory_distance_ci"] == pytest.approx(4.303 / np.sqrt(3))
    assert zig["motion_hit_rate"] == 0.5 and zig["motion_hit_rate_ci"] == 0.0 and zig["pairs"] == 3
    base = differences[("zigzag", "base")]  # 10 against 3, 6, 6
    assert base["trajectory_distance"] == pytest.approx(5.0) and base["pairs"] == 3
    # no_debias against coupled and against MotionDirector (both 5 at every seed): +1, +3; sd sqrt(2)
    debias = {(d["row"], d["against"]): d for d in all_differences(rows) if d["motion"] == "circling"}
    for against in ("coupled", "motiondirector"):
        assert debias[("no_debias", against)]["trajectory_distance"] == pytest.approx(2.0)
        assert debias[("no_debias", against)]["trajectory_distance_ci"] == pytest.approx(12.706)  # t(1) sd / sqrt(2)
        assert debias[("no_debias", against)]["pairs"] == 2
    assert t_quantile(4) == 2.776 and t_quantile(11) == 2.228 and t_quantile(100) == 1.96
    for motion in ("zigzag", "circling"):
        picked = [r for r in rows if r["motion"] == motion]
        (tmp_path / f"{motion}.json").write_text(json.dumps({"rows": picked}), encoding="utf8")
    # an experiment's table.json, or the rows.jsonl it writes row by row (an interrupted run has only that)
    (tmp_path / "circling.jsonl").write_text("\n".join(json.dumps(r) for r in rows if r["motion"] == "circling"))
    main(["table", str(tmp_path / "zigzag.json"), str(tmp_path / "circling.jsonl"), "--out", str(tmp_path / "all.json")])
    merged = json.loads((tmp_path / "all.json").read_text(encoding="utf8"))
    assert merged["summary"] == summary and len(merged["differences"]) == 8  # 5 against coupled, 3 against MD
    base_md = [d for d in merged["differences"] if (d["motion"], d["row"], d["against"]) == ("zigzag", "base", "motiondirector")]
    assert base_md[0]["trajectory_distance"] == pytest.approx(7.0)  # 10 against 2, 4, 3
    printed = capsys.readouterr().out
    assert "| zigzag | single | motiondirector | 3.00 ± 0.82 |" in printed
    assert "| zigzag | single | motiondirector − coupled | -2.00 ± 2.48 |" in printed
    assert "| circling | single | no_debias − motiondirector | +2.00 ± 12.71 |" in printed
    assert (tmp_path / "all.md").read_text(encoding="utf8").strip() == printed.strip()


def test_a_labelled_run_is_its_own_row_paired_against_motiondirector(tmp_path, capsys):
    """`table FILE@LABEL`: the run's trained rows become "<row>@LABEL" (its base and its own labelled
    rows dropped) and are paired, seed by seed, against MotionDirector of the unlabelled run."""
    import json

    from utils.toy_world.__main__ import main

    def row(name, seed, distance, own=10.0):
        scores = dict.fromkeys(("motion_hit_rate", "motion_fidelity", "appearance_accuracy", "leakage",
                                "train_s", "sample_s"), 0.0)
        return {"row": name, "motion": "circling", "mode": "single", "seed": seed, "trajectory_distance": distance,
                "reference_subject_distance": own, **scores}

    default = [row("base", None, 9.0)] + [row("motiondirector", s, d, own)
                                          for s, (d, own) in enumerate([(5.0, 12.0), (6.0, 15.0), (7.0, 12.0)])]
    other = [row("base", None, 9.0)] + [row("motiondirector", s, d, own)
                                        for s, (d, own) in enumerate([(4.0, 15.0), (6.0, 22.0), (5.0, 20.0)])]
    # a merged table holds rows it labelled itself, and other motions: --motion and the label drop them
    other += [row("motiondirector@older", 0, 1.0), dict(row("motiondirector", 0, 1.0), motion="zigzag")]
    for name, rows in (("default", default), ("other", other)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf8")
    main(["table", str(tmp_path / "default.jsonl"), f"{tmp_path / 'other.jsonl'}@t_ffn", "--motion", "circling",
          "--out", str(tmp_path / "t.json")])
    merged = json.loads((tmp_path / "t.json").read_text(encoding="utf8"))
    assert [s["row"] for s in merged["summary"]] == ["base", "motiondirector", "motiondirector@t_ffn"]
    # no coupled rows: only the base and the labelled row against MotionDirector
    assert [d["row"] for d in merged["differences"]] == ["base", "motiondirector@t_ffn"]
    difference = merged["differences"][1]
    # per seed -1, 0, -2: mean -1, sd 1, interval 4.303 / sqrt(3)
    assert difference["row"] == "motiondirector@t_ffn" and difference["against"] == "motiondirector"
    assert difference["trajectory_distance"] == pytest.approx(-1.0)
    assert difference["trajectory_distance_ci"] == pytest.approx(4.303 / np.sqrt(3))
    # the reference subject's own distance, paired too: +3, +7, +8: mean 6, sd sqrt(7)
    assert difference["reference_subject_distance"] == pytest.approx(6.0)
    assert difference["reference_subject_distance_ci"] == pytest.approx(4.303 * np.sqrt(7) / np.sqrt(3))
    printed = capsys.readouterr().out
    assert "| circling | single | motiondirector@t_ffn − motiondirector | -1.00 ± 2.48 |" in printed
    assert "| +6.00 ± 6.57 |  | 3 |" in printed  # rows from before the reference hit rate: an empty cell


def test_rows_at_another_lora_scale_are_paired_against_their_scale_and_motiondirector():
    """A run sampled at LoRA scale 2 ("<variant>_ls2", `experiment.scaled_row`) is paired against
    coupled tuning at the same scale and against MotionDirector at scale 1, seed by seed."""
    from utils.toy_world.experiment import scaled_row
    from utils.toy_world.table import all_differences, lora_scale_of

    assert scaled_row("motiondirector", 2.0) == "motiondirector_ls2" and scaled_row("coupled", 1.5) == "coupled_ls1.5"
    assert lora_scale_of("motiondirector_ls1.5") == "1.5" and lora_scale_of("coupled_ls2@t_ffn") == "2"
    assert lora_scale_of("motiondirector") is None and lora_scale_of("motiondirector_np0.5") is None

    def row(name, seed, distance):
        scores = dict.fromkeys(("motion_hit_rate", "motion_fidelity", "appearance_accuracy", "leakage"), 0.0)
        return {"row": name, "motion": "circling", "mode": "single", "seed": seed, "trajectory_distance": distance,
                **scores}

    distances = {"motiondirector": [8.0, 9.0], "coupled": [8.0, 8.0],
                 "motiondirector_ls2": [5.0, 7.0], "coupled_ls2": [6.0, 9.0]}
    rows = [row(name, seed, d) for name, values in distances.items() for seed, d in enumerate(values)]
    found = {(d["row"], d["against"]): d["trajectory_distance"] for d in all_differences(rows)}
    assert found[("motiondirector_ls2", "coupled_ls2")] == pytest.approx(-1.5)  # -1, -2
    assert found[("motiondirector_ls2", "motiondirector")] == pytest.approx(-2.5)  # -3, -2
    assert found[("coupled_ls2", "coupled")] == pytest.approx(-0.5)  # -2, +1
    assert ("coupled_ls2", "motiondirector") not in found and ("coupled", "coupled_ls2") not in found
    assert ("motiondirector_ls2", "coupled") not in found  # two scales at once: not a comparison


def test_zero_terminal_snr_schedule_leaves_no_signal_at_the_last_step():
    from diffusers import DDIMScheduler, DDPMScheduler

    from utils.toy_world.pretrain import PretrainSettings, unet_loss

    config = PretrainSettings().scheduler_config  # the default, as the shipped base
    assert config["prediction_type"] == "v_prediction"
    assert float(DDIMScheduler.from_config(config).alphas_cumprod[-1]) < 1e-6
    zeroscope = PretrainSettings(zero_terminal_snr=False).scheduler_config
    assert float(DDIMScheduler.from_config(zeroscope).alphas_cumprod[-1]) > 4e-3
    # with v-prediction the loss target is the velocity: a "UNet" that returns it scores 0
    scheduler = DDPMScheduler.from_config(config)
    latents = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))

    class VelocityOracle(torch.nn.Module):
        def forward(self, noisy, timesteps, encoder_hidden_states):
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
            return type("Out", (), {"sample": scheduler.get_velocity(latents, noise, timesteps)})

    loss = unet_loss(VelocityOracle(), scheduler, latents, None, torch.Generator().manual_seed(1))
    assert float(loss) < 1e-10


def test_unet_loss_draws_each_clips_timestep_from_its_own_range():
    """The main stage's rehearsal clips train at t >= binding_min_t, the other clips anywhere."""
    from diffusers import DDPMScheduler

    from utils.toy_world.pretrain import PretrainSettings, unet_loss

    scheduler = DDPMScheduler.from_config(PretrainSettings().scheduler_config)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, noisy, timesteps, encoder_hidden_states):
            seen.append(timesteps)
            return type("Out", (), {"sample": torch.zeros_like(noisy)})

    latents = torch.zeros(4, 4, 2, 2, 2)
    for seed in range(25):
        unet_loss(Recorder(), scheduler, latents, None, torch.Generator().manual_seed(seed), torch.tensor([0, 0, 900, 900]))
    timesteps = torch.stack(seen)
    assert timesteps[:, 2:].min() >= 900 and timesteps.max() <= 999
    assert timesteps[:, :2].min() < 300  # 50 draws from [0, 1000)
    with pytest.raises(ValueError, match="rehearsal_per_batch"):
        PretrainSettings(unet_batch=4, rehearsal_per_batch=4)
    with pytest.raises(UserError, match="--loop-weight must be above 0"):
        PretrainSettings(loop_weight=0)


def test_loop_weight_draws_loops_that_many_times_as_often():
    """Loop clips weigh `loop_weight`, the others 1; weight 1 keeps the uniform draw (and its RNG
    stream, so the shipped base's steps replay unchanged)."""
    from utils.toy_world.pretrain import loop_weights, unet_batch

    captions = ["a red circle moving in a circle", "a red circle moving left", "a red circle standing still"]
    data = {"latents": torch.arange(6.0)[:, None], "captions": captions,
            "caption_index": torch.tensor([0, 1, 2, 0, 1, 2])}
    assert loop_weights(data, 1.0) is None
    assert loop_weights(data, 3.0).tolist() == [3, 1, 1, 3, 1, 1]
    embeddings = torch.zeros(4, 1)
    uniform = unet_batch(data, embeddings, 8, 0.0, torch.Generator().manual_seed(0))[0]
    index = torch.randint(0, 6, (8,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(uniform[:, 0], index.float())
    drawn = unet_batch(data, embeddings, 3000, 0.0, torch.Generator().manual_seed(0), loop_weights(data, 3.0))[0]
    loop_share = float(((drawn == 0) | (drawn == 3)).float().mean())
    assert abs(loop_share - 6 / 10) < 0.03  # two loop clips at 3 against four at 1; 3000 draws: sd 0.009


def test_rehearsal_clips_join_the_batch_at_high_timesteps_only():
    """The main stage's (and, when asked, the vocabulary stage's) rehearsal clips are appended to
    the batch and alone get binding_min_t as their lowest timestep."""
    from utils.toy_world.pretrain import PretrainSettings, with_rehearsal

    settings = PretrainSettings(binding_min_t=500)
    batch = torch.zeros(3, 1), torch.zeros(3, 2)
    rehearsal = torch.arange(1.0, 6.0)[:, None], torch.ones(5, 2)
    latents, context, min_t = with_rehearsal(*batch, rehearsal, 2, settings, torch.Generator().manual_seed(0))
    assert latents.shape == (5, 1) and context.shape == (5, 2)
    assert (latents[:3] == 0).all() and (latents[3:] >= 1).all() and (context[3:] == 1).all()
    assert min_t.tolist() == [0, 0, 0, 500, 500]
    with pytest.raises(UserError, match="--vocabulary-rehearsal must be in"):
        PretrainSettings(unet_batch=8, vocabulary_rehearsal=8)


def test_compare_writes_scores_and_strip(tmp_path):
    """The quick start's last step on known clips: the reference's motion on the prompt's subject
    scores high, a still subject low; appearance is the share of colour and shape right."""
    import json

    from utils.toy_world.compare import compare_videos

    reference = world.write_clip(world.centered_spec("square", "blue", "zigzag"), tmp_path / "ref")
    base = world.write_clip(world.centered_spec("circle", "green", "still"), tmp_path / "base")
    md = world.write_clip(world.centered_spec("circle", "red", "zigzag"), tmp_path / "md")
    scores = compare_videos(reference, "a red circle moving right", base, md, tmp_path / "out", motion="zigzag")
    assert json.loads((tmp_path / "out" / "scores.json").read_text()) == scores
    assert set(scores) == {"reference", "prompt", "base", "motiondirector"}
    assert scores["motiondirector"]["appearance_accuracy"] == 1.0 and scores["base"]["appearance_accuracy"] == 0.5
    assert scores["motiondirector"]["motion_fidelity"] > 75 > 25 > scores["base"]["motion_fidelity"]  # mp4 costs ~10
    assert scores["motiondirector"]["trajectory_distance_px"] < 1.0 < scores["base"]["trajectory_distance_px"]
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "out" / "strip.png").shape == (2 * (3 * world.SIZE + 6), 2 * world.FRAMES * (world.SIZE + 2), 3)


def test_vae_round_trip_reads_the_clip_and_its_decode(capsys):
    """`vae-roundtrip` scores a reference clip as written and after the shipped VAE (the README's figure)."""
    from utils.toy_world.__main__ import main

    clip = REPO / "test_data" / "toy_world" / "zigzag" / "single" / "blue_square_zigzag_20_32.mp4"
    main(["vae-roundtrip", str(SHIPPED_BASE), str(clip), "--motion", "zigzag"])
    out = capsys.readouterr().out.splitlines()
    (line,) = [line for line in out if "zigzag:" in line]
    written, decoded = [float(word) for word in line.replace(",", " ").split() if word.replace(".", "").isdigit()][:2]
    assert written < 1.5 and written < decoded < 4.0
    assert "read as blue square" in line  # the 2D VAE keeps the subject's colour and shape
    (shifts,) = [line.split(":")[1].split() for line in out if "centre shift per frame" in line]
    assert len(shifts) == world.FRAMES and max(map(float, shifts)) <= 1.5  # a per-frame VAE moves no frame (0-0.5 px)


def test_compare_summarizes_pairs_named_as_the_inference_scripts_name_them(tmp_path):
    """Several pairs: prompts read from the file names, a `summary` of hit rate (share under
    CLOSE_ENOUGH), mean trajectory distance, motion fidelity and appearance; the first pair's keys
    stay as with one pair."""
    from utils.toy_world.compare import compare_videos, prompt_of
    from utils.io.video_io import write_video

    assert prompt_of("out/a_red_circle_moving_right_12.mp4") == "a red circle moving right"
    assert prompt_of("a_green_square_moving_right_0_b1.mp4") == "a green square moving right"
    reference = world.write_clip(world.centered_spec("square", "blue", "zigzag"), tmp_path / "ref")
    pairs = []
    for index, (shape, color) in enumerate([("circle", "red"), ("triangle", "green")]):
        stem = f"a_{color}_{shape}_moving_right_{index}.mp4"
        base = write_video(tmp_path / "base" / stem, world.render(world.centered_spec(shape, color, "right")), world.FPS)
        md = write_video(tmp_path / "md" / stem, world.render(world.centered_spec(shape, color, "zigzag")), world.FPS)
        pairs.append((base, md))
    scores = compare_videos(reference, None, [b for b, _ in pairs], [m for _, m in pairs], tmp_path / "out",
                            motion="zigzag", strip_pairs=2)
    assert scores["prompt"] == "a red circle moving right" and scores["base"]["video"] == str(pairs[0][0])
    summary = scores["summary"]
    assert summary["n_videos"] == 2 and summary["motion"] == "zigzag"
    assert summary["motiondirector"]["hit_rate"] == 1.0 and summary["base"]["hit_rate"] == 0.0
    # a straight drift is 7.0 px from the zig-zag (the zig's height, every frame)
    assert summary["base"]["trajectory_distance_px"] == pytest.approx(7.0, abs=1.0)
    assert summary["motiondirector"]["appearance_accuracy"] == 1.0
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "out" / "strip.png").shape[0] == 2 * (5 * world.SIZE + 10)


def test_pretraining_clips_start_near_the_centre():
    """Starts within START_SPREAD of the centred start in both axes (so the motion word says where
    the subject is in each frame); spread=None draws anywhere the clip fits."""
    specs = world.sample_specs(4, seed=0)
    for spec in specs:
        centre = world.centered_spec(spec.shape, spec.color, spec.motion).start
        assert max(abs(a - b) for a, b in zip(spec.start, centre)) <= world.START_SPREAD
    anywhere = world.sample_specs(4, seed=0, spread=None)
    far = [s for s in anywhere
           if max(abs(a - b) for a, b in zip(s.start, world.centered_spec(s.shape, s.color, s.motion).start)) > 10]
    assert far  # the unconstrained draw reaches far from the centre
    for spec in anywhere:
        (x0, x1), (y0, y1) = world.start_range(spec.motion)
        assert x0 <= spec.start[0] <= x1 and y0 <= spec.start[1] <= y1


def test_the_clocks_bar_grows_background_brightens_and_the_detector_ignores_them():
    video = world.render(world.centered_spec("circle", "red", "up"))
    greys = [int(frame[-1, 0, 0]) for frame in video]  # a bottom corner: background
    assert greys[0] == 128 - world.BACKGROUND_RAMP and greys[-1] == 128 + world.BACKGROUND_RAMP
    assert all(a < b for a, b in zip(greys, greys[1:]))
    lengths = [int((frame[0] == world.CLOCK_COLOR).all(axis=-1).sum()) for frame in video]
    assert lengths == [world.SIZE * (k + 1) // world.FRAMES for k in range(world.FRAMES)]
    assert (video[:, : world.CLOCK_ROWS] == world.CLOCK_COLOR).all(axis=-1).any(axis=(1, 2)).all()
    cleared = world.without_clock(video)
    for k, frame in enumerate(cleared):
        assert (frame[: world.CLOCK_ROWS + 1] == world.background(k)).all()
    steady = world.without_clocks(video)  # and every frame's background the same grey
    assert (steady[:, -1] == world.BACKGROUND).all() and (steady[:, : world.CLOCK_ROWS + 1] == world.BACKGROUND).all()
    assert np.array_equal(cleared[:, world.CLOCK_ROWS + 1:], video[:, world.CLOCK_ROWS + 1:])


def test_binding_probe_reads_one_only_when_the_caption_cannot_matter(tmp_path):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet3DConditionModel

    from utils.toy_world.binding import binding, encode_clips, swap_ratio, word_specs
    from utils.toy_world.pretrain import UNET_CONFIG, VAE_CONFIG, PretrainSettings, write_static_parts

    base = tmp_path / "base"  # what the probe reads of a base: tokenizer, text encoder, scheduler, VAE
    write_static_parts(base, 0, PretrainSettings(v_prediction=True).scheduler_config)
    torch.manual_seed(0)
    AutoencoderKL(**VAE_CONFIG).save_pretrained(base / "vae")
    specs = word_specs("motion")
    assert [s.motion for s in specs] == ["left", "right", "up", "down"] and len({(s.shape, s.color) for s in specs}) == 1
    latents, context = encode_clips(base, specs)
    assert latents.shape == (4, 4, 8, 8, 8) and context.shape[0] == 4
    scheduler = DDPMScheduler.from_pretrained(base / "scheduler")
    torch.manual_seed(0)
    unet = UNet3DConditionModel(**UNET_CONFIG).eval()
    for module in unet.modules():  # large cross-attention outputs: the text visibly moves the prediction
        if getattr(module, "is_cross_attention", False):
            torch.nn.init.normal_(module.to_out[0].weight, std=0.5)
    assert swap_ratio(unet, scheduler, latents, context, 950, repeats=2) != 1.0
    # the same caption for every clip, or a UNet whose cross-attention values are zero: exactly 1
    assert swap_ratio(unet, scheduler, latents, context[:1].expand_as(context), 950, repeats=2) == 1.0
    for module in unet.modules():
        if getattr(module, "is_cross_attention", False):
            torch.nn.init.zeros_(module.to_v.weight)
    assert swap_ratio(unet, scheduler, latents, context, 950, repeats=2) == 1.0
    history = binding(base, "color", steps=2, every=2, repeats=1)
    assert [h["step"] for h in history] == [2] and set(history[0]["swap_ratio"]) == {950, 800, 600}


def test_transfer_probe_training_is_a_function_of_its_seed(tiny_model_dir):
    """The probe's training gives the same LoRA whatever Python's random state was before it (the
    spatial path's skips are drawn with it), and another LoRA for another seed."""
    import random

    from models.lora import TEMPORAL, adapter_parameters
    from utils.toy_world import transfer

    def trained(seed, state):
        random.seed(state)
        components, _, _ = transfer.train_recipe(tiny_model_dir, "zigzag", transfer.Recipe(steps=10, rank=2, seed=seed))
        return torch.cat([p.detach().flatten() for p in adapter_parameters(components.denoiser, TEMPORAL)])

    first = trained(0, state=1)
    assert torch.equal(first, trained(0, state=2))
    assert not torch.equal(first, trained(1, state=1))


def test_transfer_probe_trains_the_recipes_layers_at_its_timesteps(tiny_model_dir, monkeypatch):
    """One probe recipe end to end on the tiny pipeline: the temporal LoRA sits only on the named
    parts of the UNet, training draws its timesteps from the recipe's range, and the scores cover
    the new subjects, the reference subject and both paths on it."""
    from dataclasses import replace

    from models.bases import load_components
    from models.lora import TEMPORAL
    from utils.toy_world import transfer
    from utils.toy_world.experiment import Sampling

    components = load_components(str(tiny_model_dir))
    every = components.lora_targets(TEMPORAL)
    up = transfer.temporal_targets(components, ("up_blocks",))
    assert up and set(up) < set(every) and all(name.startswith("up_blocks.") for name in up)
    assert transfer.temporal_targets(components, transfer.TEMPORAL_LAYER_GROUPS) == every
    drawn, injected = [], []
    original_draw, original_targets = transfer.TimestepRange.draw_timesteps, transfer.temporal_targets

    def recording_draw(self, scheduler, batch, device):
        drawn.append(original_draw(self, scheduler, batch, device))
        return drawn[-1]

    def recording_targets(components, groups):
        injected.extend(original_targets(components, groups))
        return injected

    monkeypatch.setattr(transfer.TimestepRange, "draw_timesteps", recording_draw)
    monkeypatch.setattr(transfer, "temporal_targets", recording_targets)
    recipe = transfer.Recipe(steps=3, temporal_layers=("up_blocks",), timesteps=(900, 1000), rank=2, caption="new_word")
    result = transfer.run_recipe(tiny_model_dir, "zigzag", recipe, Sampling(seeds=(0,), num_steps=2, subjects=2))
    assert injected == up and len(drawn) == 3 and all(900 <= int(t) < 1000 for t in torch.cat(drawn))
    assert result["new"]["clips"] == 2 and result["reference"]["clips"] == 1
    assert result["reference_both_paths"]["clips"] == 1 and 0.0 <= result["new"]["hit_rate"] <= 1.0
    assert result["reference"]["leakage"] == 0.0  # one reference: drawing it when prompted is no leak
    assert set(result["layout"]) == {"new", "reference"} and all(d >= 0 for d in result["layout"].values())
    assert replace(recipe, caption="family").prompt("circle", "red", "zigzag") == "a red circle moving right"
    assert recipe.prompt("circle", "red", "zigzag") == "a red circle zigzagging"
    assert replace(recipe, caption="random_subject").prompt("circle", "red", "zigzag") == "a red circle moving right"
    with pytest.raises(ValueError, match="unknown caption kind"):
        replace(recipe, caption="zig").prompt("circle", "red", "zigzag")
