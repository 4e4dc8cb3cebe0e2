"""Score a base video and a MotionDirector video of the same prompt and seed against the reference clip.

    scores = compare_videos(reference_clip, prompt, base_video, motiondirector_video, out_dir)

Writes `<out_dir>/scores.json` ({"reference", "prompt", "base": {...}, "motiondirector": {...}}) and
`<out_dir>/strip.png` (reference, base and MotionDirector frames, one row each). The quick start
ends with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from utils.evaluation.inputs import read_video
from utils.evaluation.motion_fidelity import motion_fidelity
from utils.toy_world.evaluate import parse_caption
from utils.toy_world.score import score_clip
from utils.toy_world.world import without_clocks


def video_scores(video: str | Path, reference: np.ndarray, prompt: str) -> dict:
    """Motion fidelity (eval's score, percent, and the detector's trajectory distance to the
    prompt's motion) and appearance accuracy (share of colour and shape right) of one video."""
    shape, color, motion = parse_caption(prompt)
    frames = read_video(Path(video))
    score = score_clip(frames, shape, color, motion)
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


def compare_videos(reference: str | Path, prompt: str, base_video: str | Path, md_video: str | Path,
                   out_dir: str | Path) -> dict:
    import imageio.v3 as iio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference_frames = read_video(Path(reference))
    scores = {
        "reference": str(reference),
        "prompt": prompt,
        "base": video_scores(base_video, reference_frames, prompt),
        "motiondirector": video_scores(md_video, reference_frames, prompt),
    }
    (out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n", encoding="utf8")
    iio.imwrite(out / "strip.png", strip([reference_frames, read_video(Path(base_video)), read_video(Path(md_video))]))
    return scores


def vae_round_trip(model_dir: str | Path, clips: list[Path], seed: int = 0) -> list[dict]:
    """The trajectory distance to its caption's motion of each clip as read from the file and
    after the base's VAE encode and decode (the latents sampled from the posterior with `seed`):
    how much of a motion the VAE alone loses."""
    import torch

    from models.bases import load_components

    components = load_components(str(model_dir))
    rows = []
    for clip in clips:
        shape, color, motion = parse_caption(Path(clip).with_suffix(".txt").read_text(encoding="utf8"))
        frames = read_video(Path(clip))
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float()[None] / 127.5 - 1.0
        torch.manual_seed(seed)
        decoded = components.decode_video(components.encode_video(pixels))[0].numpy()
        rows.append({"clip": str(clip), "motion": motion,
                     "file_px": round(score_clip(frames, shape, color, motion).trajectory_distance, 2),
                     "round_trip_px": round(score_clip(decoded, shape, color, motion).trajectory_distance, 2)})
    return rows
