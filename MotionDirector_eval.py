"""Score generated videos: text alignment, temporal consistency, PickScore and motion fidelity.

    python MotionDirector_eval.py --videos ./outputs/inference/ \
        --reference ./outputs/train/train_2024-01-01T00-00-00/ --out results.json

Prints one row per video and the mean ± std, and writes the JSON (`--out`) and a CSV beside it.
The metrics and the papers they follow: README.md, "Evaluation"; the code: utils/evaluation/.
"""

import argparse
import sys
from pathlib import Path

from utils.cli import resolve_device, run_cli
from utils.evaluation import pickscore
from utils.evaluation.clip_models import load_clip
from utils.evaluation.clip_scores import ClipScorer
from utils.evaluation.evaluate import score_videos
from utils.evaluation.inputs import find_videos, reference_clips, video_prompts
from utils.evaluation.motion_fidelity import GRID, SIZE, MotionReference
from utils.evaluation.report import format_table, results, write_results

CLIP_MODEL = "openai/clip-vit-large-patch14"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Score generated videos with the MotionDirector paper's metrics "
                                                 "and a motion-fidelity score.")
    add = parser.add_argument
    add("--videos", required=True, help="a folder of videos (.mp4 ...), a glob pattern in quotes, or one file")
    add("--prompts", default=None,
        help="prompts: a .txt (one a line: the --prompts_file the videos came from, or one per video in sorted "
             "file order) or a .json {file name: prompt}; default: read from the <prompt>_<seed>.mp4 names")
    add("--reference", nargs="+", default=None,
        help="reference clip(s) for motion fidelity: video files, folders, globs or a training run folder "
             "(its training clips, via its config.yaml); without it motion fidelity is null")
    add("--out", default=None,
        help="results JSON (a CSV is written beside it); default: eval_results.json beside the first video")
    add("--clip-model", default=CLIP_MODEL,
        help=f"CLIP for text alignment and temporal consistency: local folder or hub id (default {CLIP_MODEL})")
    add("--pickscore-model", default=pickscore.MODEL,
        help=f"PickScore model: local folder or hub id (default {pickscore.MODEL}); 'none' skips it. "
             "If it cannot be loaded the column is null and a note says why")
    add("--pickscore-processor", default=pickscore.PROCESSOR,
        help=f"processor (tokenizer + image preprocessing) for PickScore (default {pickscore.PROCESSOR})")
    add("--motion-size", type=int, default=SIZE,
        help=f"shorter side of the frames for optical flow, aspect ratio kept (default {SIZE})")
    add("--motion-grid", type=int, default=GRID,
        help=f"tracks start on a square grid, GRID points along the shorter side (default {GRID})")
    add("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    # everything about the inputs is checked before a model is loaded
    videos = find_videos(args.videos)
    prompts = video_prompts(videos, args.prompts)
    reference = (MotionReference(reference_clips(args.reference), args.motion_size, args.motion_grid)
                 if args.reference else None)
    device = resolve_device(args.device)
    clip = ClipScorer(*load_clip(args.clip_model, None, device, "--clip-model"), device)
    picker, note = pickscore.load_pickscore(args.pickscore_model, args.pickscore_processor, device)
    document = results(score_videos(videos, prompts, clip, picker, reference))
    print(format_table(document))
    for line in (note, None if reference else "motion fidelity skipped: no --reference given"):
        if line:
            print(f"note: {line}")
    out = Path(args.out) if args.out else videos[0].parent / "eval_results.json"
    for path in write_results(document, out):
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
