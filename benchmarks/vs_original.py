"""Time our training loop against the original MotionDirector's own loop, side by side.

    python benchmarks/vs_original.py                 # seeds 1-5, 60 steps each, ~5 minutes
    python benchmarks/vs_original.py --seeds 1 2 3 --steps 30
    python benchmarks/benchmark.py --vs-original     # the same (benchmark.py delegates here)

Both loops run the tiny fixture setup of ../shared/compat/original_md (tiny_t2v, the 64x64 8-frame
car-turn clip, rank 4, fp32, 2 threads) with the config of the oracle harness's `run SEED`
(reference.json's training config, 60 steps, checkpoint at the last step, no preview,
noise_prior 0), interleaved: ours seed s, original seed s, ours seed s+1, ...
Ours is `MotionDirector_train.py` through its real CLI; its step time is the `step_time_s`
scalar it logs to TensorBoard (data fetch to log). The original's is what
../shared/oracle/train_oracle.py records (end of the dataset fetch to accelerator.log).
The first --skip steps of every run are left out (warm-up, as the harness does).
Prints every run, the ratio ours/original (median and spread over the seeds), both loss means
(the same work is being timed) and the load average; the last line of stdout is one JSON object.
Time only on an idle machine: the load average is printed so that a busy one shows.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/vs_original.py` from anywhere
    sys.path.insert(0, str(REPO))

from utils.cli import run_cli  # noqa: E402
from utils.errors import UserError  # noqa: E402

DEFAULT_ORACLE = REPO.parent / "shared" / "oracle"
DEFAULT_ORACLE_PYTHON = Path("/tmp/venv_orig/bin/python")
THREADS = 2  # the harness pins the original to 2 torch threads (common.py); ours gets the same
SETUP_HINT = ("get the original's git dir (github:showlab/MotionDirector, e.g. with the search tool's fetch), then "
              "`GIT_DIR=<that git dir> bash ../shared/oracle/setup.sh` (see ../shared/oracle/README.md)")


# ---------------------------------------------------------------- command line

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                   help="one pair of runs (ours, original) per seed (default 1 2 3 4 5)")
    p.add_argument("--steps", type=int, default=60, help="training steps per run (default 60, as the harness)")
    p.add_argument("--skip", type=int, default=4,
                   help="first steps of each run left out of its median (default 4: steps 5..N, as the harness)")
    p.add_argument("--oracle-dir", type=Path, default=DEFAULT_ORACLE,
                   help="the oracle harness folder (default ../shared/oracle)")
    p.add_argument("--oracle-python", type=Path, default=DEFAULT_ORACLE_PYTHON,
                   help="python of the original's environment that setup.sh builds (default /tmp/venv_orig/bin/python)")
    p.add_argument("--keep", type=Path, help="keep our run folders under this folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.skip < 0 or args.skip >= args.steps:
        raise UserError(f"--steps must be >= 1 and 0 <= --skip < --steps (got --steps {args.steps}, --skip {args.skip})")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds must be distinct (got {args.seeds})")
    return args


def oracle_paths(oracle_dir: Path) -> dict:
    """Where the harness, its patched copy of the original and the fixtures are (as common.py finds them)."""
    root = Path(os.environ.get("ORACLE_DIR", "/tmp/oracle2"))
    fixtures = Path(os.environ.get("MD_FIXTURES", oracle_dir / ".." / "compat")).resolve() / "original_md"
    return {"script": oracle_dir / "train_oracle.py", "patched": root / "patched", "out": root / "out",
            "reference": fixtures / "reference.json", "fixtures": fixtures}


def check_oracle(args) -> dict:
    """The harness, its environment and the fixtures, or one line that says how to set them up."""
    paths = oracle_paths(args.oracle_dir)
    missing = [str(p) for p in (paths["script"], paths["reference"]) if not p.is_file()]
    if not os.access(args.oracle_python, os.X_OK):
        missing.append(str(args.oracle_python))
    if not (paths["patched"] / "MotionDirector_train.py").is_file():
        missing.append(str(paths["patched"]))
    if missing:
        raise UserError(f"the original's harness is not set up (missing {', '.join(missing)}): {SETUP_HINT}")
    return paths


# ---------------------------------------------------------------- the config both loops train with

def run_config(reference: Path, seed: int, steps: int, output_dir: Path) -> dict:
    """reference.json's training config with the changes train_oracle.py's `run` makes, for our CLI."""
    cfg = json.loads(reference.read_text())["training"]["config"]
    fixtures = reference.parent
    cfg["pretrained_model_path"] = str(fixtures / cfg["pretrained_model_path"])
    cfg["train_data"]["single_video_path"] = str(fixtures / cfg["train_data"]["single_video_path"])
    cfg["output_dir"] = str(output_dir)
    cfg["gradient_checkpointing"] = False
    cfg["max_train_steps"] = steps
    cfg["checkpointing_steps"] = steps
    cfg["validation_data"]["sample_preview"] = False
    cfg["validation_data"]["noise_prior"] = 0
    cfg["seed"] = seed  # the harness calls set_seed(seed) before the original's main (which ignores `seed`)
    cfg["logger_type"] = "tensorboard"  # our step_time_s comes from the event file
    return cfg


# ---------------------------------------------------------------- running the two loops

def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)  # each interpreter its own packages
    return env


def _call(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise UserError(f"{what} failed with exit code {proc.returncode}: {tail}")


def run_ours(paths: dict, seed: int, steps: int, work: Path) -> dict:
    """MotionDirector_train.py through its CLI; per-step times and losses from its TensorBoard events."""
    out = work / f"ours_seed{seed}"
    config = work / f"ours_seed{seed}.json"  # JSON is YAML: the CLI reads it as a config file
    config.write_text(json.dumps(run_config(paths["reference"], seed, steps, out)))
    load = os.getloadavg()[0]
    _call([sys.executable, str(REPO / "MotionDirector_train.py"), "--config", str(config)], REPO, f"our run, seed {seed}")
    scalars = read_scalars(_event_file(out))
    return {"step_s": [v for _, v in scalars["step_time_s"]],
            "spatial": _by_step(scalars.get("loss_spatial", []), steps),
            "temporal": _by_step(scalars["loss_temporal"], steps),
            "load_1m": [load, os.getloadavg()[0]]}


def run_original(paths: dict, oracle_python: Path, oracle_dir: Path, seed: int, steps: int) -> dict:
    """The harness's `train_oracle.py run SEED STEPS`; per-step times and losses from what it writes."""
    details = paths["out"] / f"train_details_seed{seed}.json"
    details.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    _call([str(oracle_python), str(oracle_dir / "train_oracle.py"), "run", str(seed), str(steps)],
          oracle_dir, f"the original's run, seed {seed}")
    rows = json.loads(details.read_text())["steps"]
    return {"step_s": [r["seconds"] for r in rows], "spatial": [r["spatial"] for r in rows],
            "temporal": [r["temporal"] for r in rows], "load_1m": [load, os.getloadavg()[0]]}


def _event_file(run_parent: Path) -> Path:
    found = sorted(glob.glob(str(run_parent / "train_*" / "logs" / "*" / "events.out.tfevents.*")))
    if not found:
        raise UserError(f"no TensorBoard event file under {run_parent} (is tensorboard installed?)")
    return Path(found[0])


def read_scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of one TensorBoard event file (old simple_value or tensor form)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in EventFileLoader(str(event_file)).Load():
        if not event.HasField("summary"):
            continue
        for value in event.summary.value:
            if value.HasField("simple_value"):
                number = value.simple_value
            elif value.HasField("tensor") and value.tensor.float_val:
                number = value.tensor.float_val[0]
            else:
                continue
            scalars.setdefault(value.tag, []).append((event.step, float(number)))
    return scalars


def _by_step(pairs: list[tuple[int, float]], steps: int) -> list[float | None]:
    """Values per step 1..steps, None where nothing was logged (a skipped spatial loss)."""
    values: list[float | None] = [None] * steps
    for step, value in pairs:
        values[step - 1] = value
    return values


# ---------------------------------------------------------------- statistics

def spread(values: list[float]) -> dict:
    """Median, min, max and quartiles (inclusive method: the data's own range) of some numbers."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1], "q1": q1, "q3": q3,
            "n": len(ordered)}


def loss_means(runs: list[dict]) -> dict:
    """Mean spatial loss over the steps that have one, and mean temporal loss, over all runs."""
    spatial = [v for r in runs for v in r["spatial"] if v is not None]
    temporal = [v for r in runs for v in r["temporal"] if v is not None]
    return {"spatial": statistics.fmean(spatial) if spatial else None,
            "temporal": statistics.fmean(temporal) if temporal else None,
            "spatial_skipped": sum(v is None for r in runs for v in r["spatial"])}


def summarise(ours: list[dict], original: list[dict], skip: int) -> dict:
    """Per-run medians (steps skip+1..N), the per-seed ratio ours/original and its spread."""
    ours_med = [statistics.median(r["step_s"][skip:]) for r in ours]
    orig_med = [statistics.median(r["step_s"][skip:]) for r in original]
    ratios = [a / b for a, b in zip(ours_med, orig_med)]
    pooled = statistics.median(s for r in ours for s in r["step_s"][skip:]) / statistics.median(
        s for r in original for s in r["step_s"][skip:])
    return {"ours_s": ours_med, "original_s": orig_med, "ratio_per_seed": ratios, "ratio": spread(ratios),
            "ratio_pooled_steps": pooled, "ours_s_median": statistics.median(ours_med),
            "original_s_median": statistics.median(orig_med),
            "losses": {"ours": loss_means(ours), "original": loss_means(original)}}


# ---------------------------------------------------------------- output

def print_report(args, summary: dict, loads: list[float]) -> None:
    first, last = args.skip + 1, args.steps
    print(f"tiny fixture setup, 64x64x8, rank 4, fp32, {THREADS} threads, {args.steps} steps; "
          f"per-run median of steps {first}..{last}; seconds per step from data fetch to log")
    for seed, a, b, r in zip(args.seeds, summary["ours_s"], summary["original_s"], summary["ratio_per_seed"]):
        print(f"  seed {seed}: ours {a:.4f} s  original {b:.4f} s  ours/original {r:.3f}")
    ratio = summary["ratio"]
    print(f"ours/original: median {ratio['median']:.3f} over {ratio['n']} seeds "
          f"(min {ratio['min']:.3f}, max {ratio['max']:.3f}, IQR {ratio['q1']:.3f}-{ratio['q3']:.3f}); "
          f"all steps pooled {summary['ratio_pooled_steps']:.3f}")
    print(f"median s/step: ours {summary['ours_s_median']:.4f}, original {summary['original_s_median']:.4f}")
    for name, m in summary["losses"].items():
        print(f"loss means, {name}: spatial {m['spatial']:.4f} (skipped on {m['spatial_skipped']} steps), "
              f"temporal {m['temporal']:.4f}")
    print(f"load average (1 min) before/after: {loads[0]:.2f} / {loads[1]:.2f}"
          + ("  -- the machine was not idle: these times are provisional" if max(loads) > 0.5 else ""))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    paths = check_oracle(args)
    work = Path(tempfile.mkdtemp(prefix="md_vs_original_")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    loads = [os.getloadavg()[0]]
    ours, original = [], []
    try:
        for seed in args.seeds:  # interleaved, so a slow spell of the machine hits both
            ours.append(run_ours(paths, seed, args.steps, work))
            original.append(run_original(paths, args.oracle_python, args.oracle_dir, seed, args.steps))
            print(f"seed {seed} done", file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    loads.append(os.getloadavg()[0])
    summary = summarise(ours, original, args.skip)
    print_report(args, summary, loads)
    result = {"seeds": args.seeds, "steps": args.steps, "skip": args.skip, "threads": THREADS,
              "load_avg_1m": loads, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary,
              "runs": {"ours": ours, "original": original}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
