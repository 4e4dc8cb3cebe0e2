"""Scoring generated videos: the paper's automatic metrics and a motion-fidelity score.

    clip_models.py     load a CLIP model + processor (local folder or hub id), one-line errors
    clip_scores.py     text alignment and temporal consistency (torchmetrics' CLIPScore)
    pickscore.py       PickScore (Kirstain et al. 2023)
    motion_fidelity.py point tracks from optical flow and the motion fidelity score (Yatim et al. 2024)
    inputs.py          which videos, their prompts, the reference clips
    report.py          table, mean ± std, JSON and CSV
    evaluate.py        scoring every video, with a progress bar
    tiny_clip.py       a tiny random CLIP folder for tests and smoke runs
"""
