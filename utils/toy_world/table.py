"""The experiment's tables: each row's scores over training seeds, and paired differences against
coupled tuning (and, for the base, the debiased term and labelled runs, against MotionDirector)
with 95% intervals.

    summary = summarize_rows(rows)            # one line per (motion, mode, row): mean and std over seeds
    differences = paired_differences(rows)    # row minus coupled tuning, seed by seed
    differences = all_differences(rows)       # those, then base, no_debias and labelled rows minus
                                              # MotionDirector, and scaled rows minus scale 1 and coupled

A difference is paired: for every training seed, the row's score minus the other row's on the
same motion, mode and seed; its interval is mean ± t(0.975, n - 1) · sd / sqrt(n) over the seeds.
The base has no training seed: its one value is paired with every seed of the other row.
A *labelled* row ("motiondirector@t_attn1_ffn": a run with other settings, see `label_rows`) is a
row of its own, paired against coupled tuning and against MotionDirector.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from utils.toy_world.experiment import CLOSE_ENOUGH, NOISE_PRIORS, VARIANTS

ROW_ORDER = ["base", *VARIANTS] + [f"motiondirector_np{p}" for p in NOISE_PRIORS]
SCORE_KEYS = ("trajectory_distance", "motion_hit_rate", "motion_fidelity", "appearance_accuracy", "leakage",
              "reference_subject_distance", "reference_subject_hit_rate", "path_hit_rate",
              "reference_subject_path_hit_rate", "train_s", "sample_s")
DIFFERENCE_KEYS = ("trajectory_distance", "motion_hit_rate", "motion_fidelity", "appearance_accuracy", "leakage",
                   "reference_subject_distance", "reference_subject_hit_rate")
# Student's t, 0.975 quantile, by degrees of freedom (scipy.stats.t.ppf(0.975, df)); 1.96 beyond.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
COLUMNS = (("trajectory_distance", "trajectory px ↓", 2), ("motion_hit_rate", "hit rate ↑", 2),
           ("motion_fidelity", "motion fidelity ↑", 1), ("appearance_accuracy", "appearance ↑", 2),
           ("leakage", "leakage ↓", 2), ("reference_subject_distance", "reference subject px ↓", 2),
           ("reference_subject_hit_rate", "reference subject hit rate ↑", 2), ("train_s", "train s", 0),
           ("sample_s", "sample s", 0))


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t (the next smaller tabulated df: a slightly wider interval)."""
    return T_975[max(d for d in T_975 if d <= df)] if df < 31 else 1.96


def label_rows(rows: list[dict], label: str) -> list[dict]:
    """The trained rows of a run with other settings (e.g. other LoRA layers), renamed
    "<row>@<label>"; its base row is dropped (the base is the same model), and so are rows it
    labelled itself (a merged table's rows of yet other runs)."""
    return [dict(r, row=f"{r['row']}@{label}") for r in rows if r["row"] != "base" and "@" not in r["row"]]


def groups(rows: list[dict]):
    """(motion, mode, row name) in table order (labelled rows last), each with its rows."""
    names = ROW_ORDER + [n for n in dict.fromkeys(r["row"] for r in rows) if n not in ROW_ORDER]
    for motion in dict.fromkeys(r["motion"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            for name in names:
                picked = [r for r in rows if (r["motion"], r["mode"], r["row"]) == (motion, mode, name)]
                if picked:
                    yield motion, mode, name, picked


def summarize_rows(rows: list[dict]) -> list[dict]:
    """One line per (motion, mode, row): each score's mean and standard deviation over the
    training seeds (the base has one value: no seed)."""
    summary = []
    for motion, mode, name, picked in groups(rows):
        seeds = [r["seed"] for r in picked]
        line = {"motion": motion, "mode": mode, "row": name, "seeds": len([s for s in seeds if s is not None])}
        for key in [k for k in SCORE_KEYS if all(k in r for r in picked)]:
            values = [r[key] for r in picked]
            line[key] = float(np.mean(values))
            line[f"{key}_std"] = float(np.std(values))
        summary.append(line)
    return summary


def paired_differences(rows: list[dict], against: str = "coupled") -> list[dict]:
    """For every (motion, mode, row) but `against`: the mean over training seeds of row minus
    `against`, and the 95% interval of that mean."""
    lines = []
    for motion, mode, name, picked in groups(rows):
        reference = {r["seed"]: r for r in rows if (r["motion"], r["mode"], r["row"]) == (motion, mode, against)}
        if name == against or not reference:
            continue
        pairs = [(r, reference[r["seed"]]) for r in picked if r["seed"] in reference]
        if name == "base":
            pairs = [(picked[0], other) for other in reference.values()]
        line = {"motion": motion, "mode": mode, "row": name, "against": against, "pairs": len(pairs)}
        for key in DIFFERENCE_KEYS:
            deltas = np.array([a[key] - b[key] for a, b in pairs if key in a and key in b])
            if len(deltas) == 0:
                continue
            half = t_quantile(len(deltas) - 1) * deltas.std(ddof=1) / math.sqrt(len(deltas)) if len(deltas) > 1 else math.nan
            line[key] = float(deltas.mean())
            line[f"{key}_ci"] = float(half)
        lines.append(line)
    return lines


def lora_scale_of(name: str) -> str | None:
    """The LoRA scale in a row name "<variant>_ls<scale>" (`experiment.scaled_row`), else None."""
    variant, marker, scale = name.partition("@")[0].rpartition("_ls")
    return scale if marker and variant else None


def at_scale_one(name: str) -> str:
    """The row of the same runs sampled at LoRA scale 1: "coupled_ls2@x" -> "coupled@x"."""
    head, at, label = name.partition("@")
    return head.rpartition("_ls")[0] + at + label


def all_differences(rows: list[dict]) -> list[dict]:
    """Every row at LoRA scale 1 against coupled tuning, then against MotionDirector, seed by seed:
    the base (what training changes), no_debias (the debiased term's effect) and every labelled
    row (the effect of its settings). Then each row sampled at another LoRA scale against its own
    runs at scale 1 (the scale's effect) and against coupled tuning at that scale."""
    @functools.cache
    def against(name: str) -> list[dict]:
        return paired_differences(rows, against=name)

    against_coupled = [line for line in against("coupled") if lora_scale_of(line["row"]) is None]
    against_md = [line for line in against("motiondirector")
                  if line["row"] in ("base", "no_debias") or "@" in line["row"]]
    scaled = []
    for name in dict.fromkeys(r["row"] for r in rows if lora_scale_of(r["row"])):
        for other in (at_scale_one(name), f"coupled_ls{lora_scale_of(name)}"):
            if other != name:
                scaled += [line for line in against(other) if line["row"] == name]
    return against_coupled + against_md + scaled


def by_subject(rows: list[dict]) -> list[dict]:
    """One line per (motion, mode, row, subject) over the rows that keep per-clip figures (runs
    since 2026-12-07): clips, mean trajectory distance and hits, mean path distance (the size left
    out) and path hits; new subjects first, then the reference subjects' own clips."""
    lines = []
    for motion, mode, name, picked in groups(rows):
        for prefix, who in (("", "new"), ("reference_subject_", "reference")):
            clips = defaultdict(list)
            for row in (r for r in picked if f"{prefix}clip_subjects" in r):
                for subject, *pair in zip(row[f"{prefix}clip_subjects"], row[f"{prefix}distances"],
                                          row[f"{prefix}path_distances"]):
                    clips[subject].append(pair)
            for subject, pairs in clips.items():
                distance, path = np.array(pairs).T
                lines.append({"motion": motion, "mode": mode, "row": name, "subject": f"{subject} ({who})",
                              "clips": len(pairs), "distance": float(distance.mean()),
                              "hits": int((distance < CLOSE_ENOUGH).sum()), "path_distance": float(path.mean()),
                              "path_hits": int((path < CLOSE_ENOUGH).sum())})
    return lines


def format_by_subject(lines: list[dict]) -> str:
    out = ["| motion | mode | row | subject | clips | trajectory px | hits | path px (size left out) | path hits |",
           "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {x['motion']} | {x['mode']} | {x['row']} | {x['subject']} | {x['clips']} | {x['distance']:.2f} | "
            f"{x['hits']} | {x['path_distance']:.2f} | {x['path_hits']} |" for x in lines]
    return "\n".join(out)


def format_table(summary: list[dict]) -> str:
    headers = ["motion", "mode", "row", *(title for _, title, _ in COLUMNS), "seeds"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for line in summary:
        cells = [line["motion"], line["mode"], line["row"]]
        for key, _, digits in COLUMNS:
            if key not in line:  # rows of a run from before the column existed
                cells.append("")
                continue
            spread = f" ± {line[key + '_std']:.{digits}f}" if line["seeds"] > 1 and key not in ("train_s", "sample_s") else ""
            cells.append(f"{line[key]:.{digits}f}{spread}")
        cells.append(str(line["seeds"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_differences(lines: list[dict]) -> str:
    titles = {key: title for key, title, _ in COLUMNS}
    digits = {key: d for key, _, d in COLUMNS}
    headers = ["motion", "mode", "difference", *(f"Δ {titles[k]}" for k in DIFFERENCE_KEYS), "seeds"]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for line in lines:
        cells = [line["motion"], line["mode"], f"{line['row']} − {line['against']}"]
        for key in DIFFERENCE_KEYS:
            if key not in line:
                cells.append("")
                continue
            d = digits[key]
            half = "" if math.isnan(line[f"{key}_ci"]) else f" ± {line[f'{key}_ci']:.{d}f}"
            cells.append(f"{line[key]:+.{d}f}{half}")
        cells.append(str(line["pairs"]))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_tables(rows: list[dict], path: str | Path) -> str:
    """Write rows, summary and paired differences to `path` (JSON) and both tables beside it
    (.md); return the tables' text."""
    summary, differences, subjects = summarize_rows(rows), all_differences(rows), by_subject(rows)
    path = Path(path)
    path.write_text(json.dumps({"summary": summary, "differences": differences, "by_subject": subjects,
                                "rows": rows}, indent=1) + "\n", encoding="utf8")
    text = tables_text(summary, differences, subjects)
    path.with_suffix(".md").write_text(text + "\n", encoding="utf8")
    return text


def tables_text(summary: list[dict], differences: list[dict], subjects: list[dict] = ()) -> str:
    text = (format_table(summary) + "\n\nPaired differences, seed by seed (mean ± the 95% interval's half-width over "
            "training seeds):\n\n" + format_differences(differences))
    if subjects:
        text += (f"\n\nBy subject, every training seed's clips together (hits: clips within {CLOSE_ENOUGH:g} px):"
                 "\n\n" + format_by_subject(subjects))
    return text
