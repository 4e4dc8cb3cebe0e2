"""Score a base video and a MotionDirector video of the same prompt and seed against the reference clip.

    scores = compare_videos(reference_clip, prompt, base_video, motiondirector_video, out_dir)

Writes `<out_dir>/scores.json` ({"reference", "prompt", "base": {...}, "motiondirector": {...}}) and
`<out_dir>/strip.png` (reference, base and MotionDirector frames, one row each). The quick start
ends with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from utils.evaluation.inputs import read_video
from utils.evaluation.motion_fidelity import motion_fidelity
from utils.toy_world.detector import read_clip
from utils.toy_world.evaluate import parse_caption
from utils.toy_world.score import score_clip, score_reading
from utils.toy_world.world import without_clocks


def video_scores(video: str | Path, reference: np.ndarray, prompt: str, motion: str | None = None) -> dict:
    """Motion fidelity (eval's score, percent, and the detector's trajectory distance to `motion`,
    default the prompt's) and appearance accuracy (share of colour and shape right) of one video."""
    shape, color, prompted = parse_caption(prompt)
    frames = read_video(Path(video))
    score = score_clip(frames, shape, color, motion or prompted)
    return {
        "video": str(video),
        "motion_fidelity": round(float(motion_fidelity(without_clocks(frames), without_clocks(reference))), 2),
        "trajectory_distance_px": round(float(score.trajectory_distance), 2),
        "appearance_accuracy": (int(score.color_ok) + int(score.shape_ok)) / 2,
        "detected": {"color": score.color, "shape": score.shape},
    }


def strip(clips: list[np.ndarray], scale: int = 2) -> np.ndarray:
    """uint8 picture: one row of frames per clip, white gaps between frames and rows."""
    frames = min(len(c) for c in clips)
    gap = np.full((clips[0].shape[1], 2, 3), 255, np.uint8)
    rows = [np.concatenate([np.concatenate([f, gap], axis=1) for f in clip[:frames]], axis=1) for clip in clips]
    bar = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    picture = np.concatenate([np.concatenate([row, bar]) for row in rows])
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


def prompt_of(video: str | Path) -> str:
    """The prompt an inference script generated `video` from: its name without the seed."""
    return re.sub(r"_\d+(_b\d+)?$", "", Path(video).stem).replace("_", " ")


def summary_of(scored: list[dict]) -> dict:
    from utils.toy_world.experiment import CLOSE_ENOUGH

    distances = np.array([s["trajectory_distance_px"] for s in scored])
    return {"hit_rate": float((distances < CLOSE_ENOUGH).mean()), "trajectory_distance_px": round(float(distances.mean()), 2),
            "motion_fidelity": round(float(np.mean([s["motion_fidelity"] for s in scored])), 2),
            "appearance_accuracy": round(float(np.mean([s["appearance_accuracy"] == 1.0 for s in scored])), 3)}


def compare_videos(reference: str | Path, prompt: str | None, base_videos, md_videos, out_dir: str | Path,
                   motion: str | None = None, strip_pairs: int = 1) -> dict:
    """Score the pairs (see the module doc); a single video each may be given as a path."""
    import imageio.v3 as iio

    base_videos = [base_videos] if isinstance(base_videos, (str, Path)) else list(base_videos)
    md_videos = [md_videos] if isinstance(md_videos, (str, Path)) else list(md_videos)
    if len(base_videos) != len(md_videos):
        raise ValueError(f"{len(base_videos)} base videos but {len(md_videos)} MotionDirector ones: give them in pairs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference_frames = read_video(Path(reference))
    prompts = [prompt or prompt_of(video) for video in base_videos]
    scored = {name: [video_scores(v, reference_frames, p, motion) for v, p in zip(videos, prompts)]
              for name, videos in (("base", base_videos), ("motiondirector", md_videos))}
    scores = {"reference": str(reference), "prompt": prompts[0], "base": scored["base"][0],
              "motiondirector": scored["motiondirector"][0]}
    if len(base_videos) > 1:
        scores["summary"] = {"n_videos": len(base_videos), "motion": motion or parse_caption(prompts[0])[2],
                             "base": summary_of(scored["base"]), "motiondirector": summary_of(scored["motiondirector"])}
    (out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n", encoding="utf8")
    rows = [reference_frames]
    for base_video, md_video in list(zip(base_videos, md_videos))[:strip_pairs]:
        rows += [read_video(Path(base_video)), read_video(Path(md_video))]
    iio.imwrite(out / "strip.png", strip(rows))
    return scores


def vae_round_trip(model_dir: str | Path, clips: list[tuple[Path, str | None]], seed: int = 0) -> list[dict]:
    """The trajectory distance to its motion of each (clip, motion) as read from the file and after
    the base's VAE encode and decode (the latents sampled from the posterior with `seed`): how much
    of a motion the VAE alone loses, and the colour and shape the detector reads after it. A motion
    of None is the clip caption's (as `compare_videos`)."""
    import torch

    from models.bases import load_components

    components = load_components(str(model_dir))
    rows = []
    for clip, target in clips:
        shape, color, motion = parse_caption(Path(clip).with_suffix(".txt").read_text(encoding="utf8"))
        motion = target or motion
        frames = read_video(Path(clip))
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float()[None] / 127.5 - 1.0
        torch.manual_seed(seed)
        decoded = components.decode_video(components.encode_video(pixels))[0].numpy()
        written, after = read_clip(frames), read_clip(decoded)  # each clip read by the detector once
        scores = [score_reading(reading, shape, color, motion) for reading in (written, after)]
        rows.append({"clip": str(clip), "motion": motion,
                     "file_px": round(scores[0].trajectory_distance, 2),
                     "round_trip_px": round(scores[1].trajectory_distance, 2),
                     "read_after": f"{after.color} {after.shape}",
                     "size_px": [None if s.size is None else round(s.size, 2) for s in scores],
                     "frame_px": frame_shifts(written.track, after.track)})
    return rows


def frame_shifts(written: np.ndarray, decoded: np.ndarray) -> list[float | None]:
    """How far the subject centre moved in each frame from the detector's track `written` to
    `decoded` (None where either frame shows no subject): which frames a VAE blurs together."""
    shifts = np.linalg.norm(written[:, :2] - decoded[:, :2], axis=1)
    return [None if np.isnan(shift) else round(float(shift), 1) for shift in shifts]
