"""Results: a printed table (one row per video, then mean ± std), JSON and CSV with the same columns."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

METRICS = ("text_alignment", "temporal_consistency", "pickscore", "motion_fidelity")
COLUMNS = ("video", "prompt") + METRICS


def summarize(rows: list[dict]) -> tuple[dict, dict]:
    """(mean, std) per metric over the videos that have it (None where none has); std is the
    population standard deviation (ddof=0)."""
    mean, std = {}, {}
    for metric in METRICS:
        values = [row[metric] for row in rows if row[metric] is not None]
        if not values:
            mean[metric] = std[metric] = None
            continue
        mean[metric] = sum(values) / len(values)
        std[metric] = math.sqrt(sum((v - mean[metric]) ** 2 for v in values) / len(values))
    return mean, std


def results(rows: list[dict]) -> dict:
    """The JSON document: {"videos": [...], "mean": {...}, "std": {...}}."""
    mean, std = summarize(rows)
    return {"videos": [{c: row[c] for c in COLUMNS} for row in rows], "mean": mean, "std": std}


def write_results(document: dict, json_path: str | Path) -> tuple[Path, Path]:
    """Write the JSON and, beside it, a CSV of the per-video rows (empty cell = null)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf8")
    csv_path = json_path.with_suffix(".csv")
    with open(csv_path, "w", newline="", encoding="utf8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in document["videos"]:
            writer.writerow({c: "" if row[c] is None else row[c] for c in COLUMNS})
    return json_path, csv_path


def format_table(document: dict) -> str:
    """Fixed-width table: a row per video (its file name), then mean ± std per metric."""
    headers = ["video", *METRICS]
    lines = [[Path(row["video"]).name, *(_number(row[m]) for m in METRICS)] for row in document["videos"]]
    mean, std = document["mean"], document["std"]
    summary = ["mean ± std", *(_number(mean[m]) if mean[m] is None else f"{mean[m]:.2f} ± {std[m]:.2f}"
                               for m in METRICS)]
    widths = [max(len(line[i]) for line in [headers, summary, *lines]) for i in range(len(headers))]
    def fmt(cells):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
    rule = "-" * len(fmt(headers))
    return "\n".join([fmt(headers), rule, *map(fmt, lines), rule, fmt(summary)])


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"
