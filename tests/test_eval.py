"""Evaluation: CLIP scores and PickScore against hand computations with transformers, motion
fidelity on synthetic clips with a known answer, prompts, the report, and both CLIs end to end."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import MotionDirector_eval as eval_cli
import MotionDirector_inference as single_cli
import MotionDirector_inference_multi as multi_cli
from models.lora import TEMPORAL, adapter_parameters, add_adapter
from models.lora_io import save_adapter
from models.bases.zeroscope import load_unet
from utils.cli import run_cli
from utils.evaluation import motion_fidelity as mf
from utils.evaluation.clip_models import load_clip
from utils.evaluation.clip_scores import ClipScorer
from utils.evaluation.inputs import prompt_from_name, reference_clips, video_prompts
from utils.evaluation.pickscore import PickScorer, load_pickscore
from utils.evaluation.report import format_table, results, summarize, write_results
from utils.evaluation.tiny_clip import build_tiny_clip
from utils.tools.synthetic import make_moving_shape_video, moving_shape_frames
from utils.io.video_io import write_video
from helpers import lora_targets

PROMPTS = ["A car is running on the road.", "A tiger, in the forest."]
SMALL = ["-W", "64", "-H", "64", "-T", "8", "-s", "2", "-d", "cpu"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip", seed=0)


@pytest.fixture(scope="module")
def clip_parts(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)


def _frames(count=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 40, 48, 3), dtype=np.uint8)


def _hand_cosines(clip_parts, frames, prompt):
    """(F,) cos(image, text) and logits_per_image with transformers' CLIPModel forward."""
    model, processor = clip_parts
    inputs = processor(text=[prompt], images=list(frames), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return (out.image_embeds @ out.text_embeds.T)[:, 0], out.logits_per_image[:, 0]


# ----------------------------------------------------------------------------- CLIP scores and PickScore


def test_text_alignment_equals_a_hand_computation_with_transformers(tiny_clip, clip_parts):
    scorer = ClipScorer(*load_clip(str(tiny_clip), None, "cpu", "--clip-model"), "cpu")
    frames = _frames()
    hand = []
    for prompt in ["a car is running", "the tiger in the forest", "road", "desert tank"]:
        cosines, _ = _hand_cosines(clip_parts, frames, prompt)
        hand.append(100 * cosines.mean().item())
        # torchmetrics' CLIPScore clamps the mean at 0
        assert scorer.text_alignment(frames, prompt) == pytest.approx(max(hand[-1], 0.0), abs=1e-4)
    assert max(hand) > 0 and min(hand) != max(hand)  # a clamp-only match would prove nothing


def test_temporal_consistency_is_100_for_identical_frames_and_a_hand_value_otherwise(tiny_clip, clip_parts):
    scorer = ClipScorer(*load_clip(str(tiny_clip), None, "cpu", "--clip-model"), "cpu")
    still = np.repeat(_frames(1), 4, axis=0)
    assert scorer.temporal_consistency(still) == pytest.approx(100.0, abs=1e-4)
    assert scorer.temporal_consistency(still[:1]) is None

    frames = _frames(4, seed=1)
    model, processor = clip_parts
    with torch.no_grad():
        embeds = model(**processor(text=["x"], images=list(frames), return_tensors="pt")).image_embeds
    hand = 100 * (embeds[:-1] * embeds[1:]).sum(-1).mean().item()
    assert scorer.temporal_consistency(frames) == pytest.approx(hand, abs=1e-4)
    assert hand < 99.99


def test_pickscore_is_the_published_formula(tiny_clip, clip_parts):
    picker = PickScorer(*load_clip(str(tiny_clip), None, "cpu", "--pickscore-model"), "cpu")
    frames = _frames(3, seed=2)
    _, logits = _hand_cosines(clip_parts, frames, PROMPTS[0])  # logit_scale.exp() * cos, per frame
    assert picker.score(frames, PROMPTS[0]) == pytest.approx(logits.mean().item(), abs=1e-4)


def test_pickscore_missing_or_off_is_null_with_a_note(tmp_path):
    picker, note = load_pickscore(str(tmp_path / "no_pickscore"), None, "cpu")
    assert picker is None and note.startswith("PickScore skipped: --pickscore-model: cannot load")
    assert "\n" not in note
    assert load_pickscore("none", None, "cpu") == (None, "PickScore skipped (--pickscore-model none)")


# ----------------------------------------------------------------------------- motion fidelity


@pytest.fixture(scope="module")
def square_right():
    return moving_shape_frames(16, 64, "right")


@pytest.fixture(scope="module")
def square_tracks(square_right):
    return mf.track_displacements(square_right)


def _fidelity(frames, reference_tracks):
    return mf.fidelity_of_displacements(mf.track_displacements(frames), reference_tracks)


def test_same_motion_other_subject_scores_high(square_right, square_tracks):
    assert _fidelity(square_right, square_tracks) == pytest.approx(100.0, abs=1e-6)
    assert _fidelity(square_right[..., ::-1].copy(), square_tracks) > 90  # colour-swapped copy
    circle = moving_shape_frames(16, 64, "right", "circle", (0.1, 0.3, 0.9), hue=0.3)
    assert _fidelity(circle, square_tracks) > 90


def test_reversed_still_or_other_motion_scores_low(square_right, square_tracks):
    assert _fidelity(square_right[::-1].copy(), square_tracks) < 10  # time-reversed: moving left
    assert _fidelity(np.repeat(square_right[:1], 16, axis=0), square_tracks) == 0.0  # still copy
    assert _fidelity(moving_shape_frames(16, 64, "down"), square_tracks) < 10


def test_fidelity_definition_on_hand_made_tracks():
    right = np.tile([[3.0, 0.0]], (2, 5, 1))  # two tracks moving right for 5 frames
    assert mf.fidelity_of_displacements(right, right) == pytest.approx(100.0)
    assert mf.fidelity_of_displacements(-right, right) == pytest.approx(-100.0)
    up = right[:, :, ::-1].copy()
    assert mf.fidelity_of_displacements(up, right) == pytest.approx(0.0)
    half = right.copy()
    half[:, :2] = 0.0  # still for 2 of 5 frames: those count 0, the 3 others 1
    assert mf.track_correlation(half, right)[0, 0] == pytest.approx(3 / 5)
    still = np.zeros_like(right)
    assert mf.fidelity_of_displacements(still, right) == 0.0
    assert mf.fidelity_of_displacements(still, still) == 100.0


def test_frame_counts_are_matched_evenly(square_right):
    assert mf.even_frames(square_right, 16) is square_right
    assert (mf.even_frames(np.arange(16), 4) == [0, 5, 10, 15]).all()
    reference = mf.MotionReference([square_right, square_right[::-1].copy()])
    assert reference.score(moving_shape_frames(8, 64, "left", "circle")) > 90  # best of the two clips
    assert reference.score(square_right[:1]) is None  # one frame has no motion to compare


def test_a_one_frame_reference_chunk_is_left_out_and_the_others_score(tmp_path, caplog):
    """A single 17-frame video cut into 8-frame chunks leaves a last chunk of 1 frame: no motion to
    compare, so it is left out with a warning instead of nulling every score."""
    clip = make_moving_shape_video(tmp_path / "clip.mp4", frames=17, size=64)
    run = _run_folder(tmp_path, f"dataset_types: [single_video]\ntrain_data:\n  single_video_path: {clip}\n"
                                "  n_sample_frames: 8\n  width: 64\n  height: 64\n")
    clips = reference_clips([str(run)])
    assert [len(c) for c in clips] == [8, 8, 1]
    with caplog.at_level("WARNING"):
        score = mf.MotionReference(clips).score(moving_shape_frames(8, 64, "right", "circle"))
    assert score is not None and score > 90
    assert "fewer than 2 frames" in caplog.text


def _texture_pan(width: int, height: int, frames: int = 10, step: int = 2) -> np.ndarray:
    """A camera panning diagonally over a smooth random texture: every point moves (-step, -step)
    pixels a frame, 45 degrees whatever the frame's shape."""
    import cv2

    noise = np.random.default_rng(0).integers(0, 256, (400, 400)).astype(np.float32)
    texture = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 3), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return np.stack([np.repeat(texture[10 + step * t:10 + step * t + height, 10 + step * t:10 + step * t + width, None],
                               3, axis=2) for t in range(frames)])


def test_one_diagonal_motion_scores_the_same_at_two_aspect_ratios():
    """Frames are scaled with their aspect ratio kept, so the 45-degree pan of a 3:1 clip (and of a
    2:5 one) matches the square clip's: measured 99.94 and 99.82 against 100. Squashed to a square,
    as before, the wide clip's motion turns to ~72 degrees and scores 94.3."""
    import cv2

    square = mf.track_displacements(_texture_pan(64, 64))
    for width, height in ((192, 64), (64, 160)):
        assert _fidelity(_texture_pan(width, height), square) == pytest.approx(100.0, abs=0.5)
    squashed = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in _texture_pan(192, 64)])
    assert _fidelity(squashed, square) < 97


# ----------------------------------------------------------------------------- prompts and report


def test_prompts_from_names_text_files_and_json(tmp_path):
    names = ["A_car_is_running_on_the_road_7.mp4", "A_car_is_running_on_the_road_7_1.mp4",
             "A_tiger_in_the_forest_12_b1.mp4"]
    videos = [tmp_path / n for n in names]
    assert [prompt_from_name(v) for v in videos] == ["A car is running on the road"] * 2 + ["A tiger in the forest"]
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text(f"# a comment\n{PROMPTS[1]}\n\n{PROMPTS[0]}\n", encoding="utf8")
    assert video_prompts(videos, str(prompts_file)) == [PROMPTS[0], PROMPTS[0], PROMPTS[1]]

    plain = [tmp_path / "b.mp4", tmp_path / "a.mp4"]  # one line per video, in the given (sorted) order
    lines = tmp_path / "lines.txt"
    lines.write_text("first\nsecond\n", encoding="utf8")
    assert video_prompts(plain, str(lines)) == ["first", "second"]

    mapping = tmp_path / "prompts.json"
    mapping.write_text(json.dumps({"b.mp4": "bee", "a": "ay"}), encoding="utf8")
    assert video_prompts(plain, str(mapping)) == ["bee", "ay"]


def test_summary_json_and_csv(tmp_path):
    rows = [{"video": "a.mp4", "prompt": "x", "text_alignment": 20.0, "temporal_consistency": 90.0,
             "pickscore": None, "motion_fidelity": 50.0},
            {"video": "b.mp4", "prompt": "y", "text_alignment": 30.0, "temporal_consistency": 96.0,
             "pickscore": None, "motion_fidelity": None}]
    mean, std = summarize(rows)
    assert mean == {"text_alignment": 25.0, "temporal_consistency": 93.0, "pickscore": None, "motion_fidelity": 50.0}
    assert std == {"text_alignment": 5.0, "temporal_consistency": 3.0, "pickscore": None, "motion_fidelity": 0.0}
    document = results(rows)
    json_path, csv_path = write_results(document, tmp_path / "out" / "results.json")
    assert json.loads(json_path.read_text()) == {"videos": rows, "mean": mean, "std": std}
    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["video", "prompt", "text_alignment", "temporal_consistency", "pickscore",
                              "motion_fidelity"]
    assert table[1]["pickscore"] == "" and float(table[1]["text_alignment"]) == 30.0
    printed = format_table(document)
    assert "25.00 ± 5.00" in printed and printed.splitlines()[2].startswith("a.mp4")


def _run_folder(tmp_path, config: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("pretrained_model_path: ./models/x\noutput_dir: ./outputs\n" + config,
                                     encoding="utf8")
    return run


def test_reference_from_a_training_run_folder(tmp_path):
    clip = make_moving_shape_video(tmp_path / "clip.mp4", frames=16, size=64)
    run = _run_folder(tmp_path, f"dataset_types: [single_video]\ntrain_data:\n  single_video_path: {clip}\n"
                                "  n_sample_frames: 8\n  width: 32\n  height: 32\n")
    clips = reference_clips([str(run)])
    assert [c.shape for c in clips] == [(8, 32, 32, 3), (8, 32, 32, 3)]  # the two 8-frame training chunks


def test_reference_of_a_run_is_the_frames_it_trained(tiny_model_dir, tmp_path):
    """A folder dataset draws each clip's start frame. One training step with seed 7 caches the
    pixels it trained on (random_hflip_img > 0 keeps them): the reference reads them; without them
    it re-runs the pipeline with the run's seed and gets the same frames (not a seed-0 draw)."""
    import random

    from utils.training.config import load_config
    from utils.training.dataset import build_dataset
    from utils.training.trainer import run as train

    data = tmp_path / "clips"
    make_moving_shape_video(data / "a.mp4", frames=24, size=64)
    make_moving_shape_video(data / "b.mp4", frames=24, size=64, direction="down")
    repo = Path(__file__).resolve().parents[1]
    overrides = [f"pretrained_model_path={tiny_model_dir}", f"output_dir={tmp_path / 'out'}", "dataset_types=[folder]",
                 f"train_data.path={data}", "train_data.n_sample_frames=4", "train_data.width=32",
                 "train_data.height=32", "random_hflip_img=0.5", "max_train_steps=1", "checkpointing_steps=1",
                 "validation_data.sample_preview=false", "validation_data.noise_prior=0", "seed=7"]
    run = train(load_config(str(repo / "configs" / "config_tiny_cpu.yaml"), overrides))
    trained = reference_clips([str(run)])
    assert [c.shape for c in trained] == [(4, 32, 32, 3)] * 2
    for file in (run / "cached_latents").glob("cached_*.pt"):  # a run that kept no pixels
        entry = torch.load(file, weights_only=True)
        del entry["pixel_values"]
        torch.save(entry, file)
    redrawn = reference_clips([str(run)])
    assert all(np.array_equal(a, b) for a, b in zip(trained, redrawn))
    random.seed(0)
    dataset = build_dataset(load_config(str(run / "config.yaml")).train_data, ["folder"])
    seed_0 = [((dataset[i]["pixel_values"].permute(0, 2, 3, 1).numpy() + 1) * 127.5).round() for i in range(2)]
    assert not all(np.array_equal(a, b) for a, b in zip(trained, seed_0))


# ----------------------------------------------------------------------------- CLIs end to end


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A training run folder holding a random temporal LoRA of the tiny model."""
    run = tmp_path_factory.mktemp("runs") / "run"
    unet = load_unet(str(tiny_model_dir))
    add_adapter(unet, TEMPORAL, lora_targets(unet, TEMPORAL), rank=4)
    generator = torch.Generator().manual_seed(2)
    for p in adapter_parameters(unet, TEMPORAL):
        p.data = torch.randn(p.shape, generator=generator) * 0.05
    save_adapter(unet, TEMPORAL, run / "checkpoint-2" / TEMPORAL / "lora" / "2_unet.safetensors")
    return run


def _run(main, argv, capsys):
    code = run_cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err) -> str:
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_prompts_file_then_evaluation_end_to_end(tiny_model_dir, tiny_run, tiny_clip, tmp_path, capsys):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("# new appearances\n" + "\n".join(PROMPTS) + "\n", encoding="utf8")
    out_dir = tmp_path / "videos"
    argv = ["--model", tiny_model_dir, "--prompts_file", prompts_file, "-cf", tiny_run, "-ci", "2",
            "--seed", "5", "-rn", "2", "-o", out_dir, *SMALL]
    code, out, err = _run(single_cli.main, argv, capsys)
    assert code == 0, err
    stems = ["A_car_is_running_on_the_road", "A_tiger_in_the_forest"]
    expected = sorted(f"{s}_{seed}.mp4" for s in stems for seed in (5, 6))
    assert sorted(p.name for p in out_dir.iterdir()) == expected

    reference = make_moving_shape_video(tmp_path / "reference.mp4", frames=8, size=64)
    argv = ["--videos", out_dir, "--prompts", prompts_file, "--reference", reference, "--clip-model", tiny_clip,
            "--pickscore-model", tiny_clip, "--pickscore-processor", tiny_clip, "--device", "cpu",
            "--motion-size", "64", "--out", tmp_path / "results.json"]
    code, out, err = _run(eval_cli.main, argv, capsys)
    assert code == 0, err
    document = json.loads((tmp_path / "results.json").read_text())
    assert [Path(v["video"]).name for v in document["videos"]] == expected
    assert [v["prompt"] for v in document["videos"]] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert all(v[m] is not None for v in document["videos"] for m in document["mean"])
    assert set(document) == {"videos", "mean", "std"}
    assert (tmp_path / "results.csv").is_file()
    assert "mean ± std" in out and f"wrote {tmp_path / 'results.json'}" in out


def test_evaluation_without_reference_or_pickscore_gives_nulls_and_notes(tiny_clip, tmp_path, capsys):
    write_video(tmp_path / "A_red_square_3.mp4", moving_shape_frames(4, 32))
    argv = ["--videos", f"{tmp_path}/*.mp4", "--clip-model", tiny_clip, "--pickscore-model", tmp_path / "nothing",
            "--device", "cpu"]
    code, out, err = _run(eval_cli.main, argv, capsys)
    assert code == 0, err
    document = json.loads((tmp_path / "eval_results.json").read_text())
    assert document["videos"][0]["prompt"] == "A red square"
    assert document["mean"]["pickscore"] is None and document["videos"][0]["motion_fidelity"] is None
    assert "note: PickScore skipped: --pickscore-model: cannot load" in out
    assert "note: motion fidelity skipped: no --reference given" in out


@pytest.mark.parametrize("case, expected", [
    ("no_videos", "--videos: no videos found"),
    ("bad_video", "cannot decode video"),
    ("no_clip", "--clip-model: cannot load a CLIPModel"),
    ("prompt_count", "--prompts: "),
])
def test_evaluation_bad_input_is_one_line_error(case, expected, tiny_clip, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    if case != "no_videos":
        write_video(videos / "a_1.mp4", moving_shape_frames(4, 32))
    if case == "bad_video":
        (videos / "b_1.mp4").write_bytes(b"not a video")
    argv = ["--videos", videos, "--clip-model", tmp_path / "missing" if case == "no_clip" else tiny_clip,
            "--pickscore-model", "none", "--device", "cpu"]
    if case == "prompt_count":
        (tmp_path / "p.txt").write_text("one\ntwo\n")
        argv += ["--prompts", tmp_path / "p.txt"]
    assert expected in _one_line_error(*_run(eval_cli.main, argv, capsys)[::2])


def test_prompts_file_errors(tiny_model_dir, tmp_path, capsys):
    base = ["--model", tiny_model_dir, "-o", tmp_path, *SMALL]
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    message = _one_line_error(*_run(multi_cli.main, [*base, "--prompts_file", empty], capsys)[::2])
    assert "holds no prompt" in message
    message = _one_line_error(*_run(multi_cli.main, [*base, "--prompts_file", tmp_path / "none.txt"], capsys)[::2])
    assert "--prompts_file: file" in message and "not found" in message
    for argv in ([*base], [*base, "-p", "x", "--prompts_file", empty]):  # neither, or both
        with pytest.raises(SystemExit) as exit_info:
            multi_cli.build_parser().parse_args([str(a) for a in argv])
        assert exit_info.value.code == 2
    assert "one of the arguments -p/--prompt --prompts_file is required" in capsys.readouterr().err
