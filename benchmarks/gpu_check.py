"""The GPU figures in one run (`bash benchmarks/gpu_check.sh` calls this when CUDA is there).

Parts, each a `benchmark.py` subprocess with its own time limit inside an overall budget, so one
that fails or hangs is recorded and the rest still run:
  * `--estimate-check` of the ZeroScope architecture at 384x384x16, rank 32: checkpointing fine and
    block x fp16 and bf16 (the four run side by side: each measures its own process's peak);
  * the real training step, fine checkpointing, fp16, SDPA: s/step, peak memory, MFU (then, time
    permitting, with xformers when it imports, and with `--compile`);
  * one 576x320x24 sampling run of 30 DDIM steps;
  * the AnimateDiff and Wan steps when those bases exist (`benchmark.py --arch` lists them).
Writes `benchmarks/results/gpu_<date>.json` after every part (a killed run keeps what it had).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = [sys.executable, str(REPO / "benchmarks" / "benchmark.py")]
ZEROSCOPE = ["--arch", "zeroscope", "--rank", "32"]
SIZE_384 = ["--width", "384", "--height", "384", "--frames", "16"]
BUDGET_S = 470  # the whole run stays under 8 minutes on an H100/H200
MIN_PART_S = 20  # a part is skipped when less than this is left
# Sizes for the other bases' steps (each base checks its own sizes; Wan takes 4k + 1 frames).
OTHER_BASES = {
    "animatediff": ["--width", "512", "--height", "512", "--frames", "16", "--precision", "fp16"],
    "wan2.1-1.3b": ["--width", "832", "--height", "480", "--frames", "33", "--precision", "bf16"],
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for all parts (default {BUDGET_S})")
    p.add_argument("--out", help="result file (default benchmarks/results/gpu_<date>.json)")
    return p.parse_args(argv)


class Run:
    """The parts run so far, their results, and the time left; written to `path` after each part."""

    def __init__(self, path: Path, budget: float):
        self.path, self.deadline = path, time.monotonic() + budget
        self.document = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                         "environment": environment(), "parts": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def part(self, name: str, args: list[str], limit: float) -> dict:
        """Run one benchmark.py command within min(limit, time left); record what it gave."""
        allowed = min(limit, self.left())
        if allowed < MIN_PART_S:
            record = {"cmd": args, "skipped": f"{self.left():.0f} s of the budget left"}
        else:
            record = run_command(args, allowed)
        self.record(name, record)
        return record

    def parts_side_by_side(self, commands: dict[str, list[str]], limit: float) -> None:
        """Parts that measure memory, not time: run at once, each its own process."""
        allowed = min(limit, self.left())
        if allowed < MIN_PART_S:
            for name, args in commands.items():
                self.record(name, {"cmd": args, "skipped": f"{self.left():.0f} s of the budget left"})
            return
        with ThreadPoolExecutor(len(commands)) as pool:
            futures = {name: pool.submit(run_command, args, allowed) for name, args in commands.items()}
        for name, future in futures.items():
            self.record(name, future.result())

    def record(self, name: str, record: dict) -> None:
        self.document["parts"][name] = record
        self.save()
        status = record.get("skipped") or ("ok" if record.get("rc") == 0 else f"failed: {record.get('error')}")
        print(f"gpu_check: {name}: {status}", flush=True)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.document, indent=1) + "\n")
        os.replace(tmp, self.path)


def run_command(args: list[str], timeout: float) -> dict:
    """rc, seconds, the last stdout line as JSON (benchmark.py's result) and the error's last lines."""
    start = time.monotonic()
    record = {"cmd": ["benchmarks/benchmark.py", *args], "limit_s": round(timeout)}
    try:
        proc = subprocess.run([*BENCHMARK, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        record.update(rc=None, timed_out=True, seconds=round(time.monotonic() - start, 1),
                      error=f"no result within {timeout:.0f} s", stderr_tail=_tail(err.stderr))
        return record
    record.update(rc=proc.returncode, timed_out=False, seconds=round(time.monotonic() - start, 1))
    lines = proc.stdout.strip().splitlines()
    try:
        record["result"] = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        record["result"] = None
    if proc.returncode != 0:
        record.update(error=(_tail(proc.stderr) or ["exit code %d" % proc.returncode])[-1], stderr_tail=_tail(proc.stderr))
    return record


def _tail(text, lines: int = 15) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "").strip().splitlines()[-lines:]


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "xformers": module_version("xformers"),
            "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain"))}


def module_version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except Exception:  # not installed, or broken against this torch
        return None


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def available_archs() -> list[str]:
    """`benchmark.py --arch` choices of this checkout (other bases may not exist yet)."""
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    import estimate

    return estimate.all_archs()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    date = datetime.datetime.now().strftime("%Y-%m-%d_%H%M")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"gpu_{date}.json"
    run = Run(out, args.budget)
    checks = {f"estimate_check_{c}_{p}": ["--estimate-check", *ZEROSCOPE, *SIZE_384, "--precision", p,
                                          "--checkpointing", c]
              for c in ("fine", "block") for p in ("fp16", "bf16")}
    run.parts_side_by_side(checks, limit=180)
    step = [*ZEROSCOPE, *SIZE_384, "--precision", "fp16", "--checkpointing", "fine", "--steps", "10", "--warmup", "3",
            "--skip-sampling"]
    run.part("step_fp16_fine_sdpa", step, limit=120)
    run.part("sampling_576x320x24_30_steps", [*ZEROSCOPE, "--width", "576", "--height", "320", "--frames", "24",
                                              "--precision", "fp16", "--checkpointing", "fine", "--steps", "1",
                                              "--warmup", "0", "--skip-caching", "--sample-steps", "30"], limit=120)
    archs = available_archs()
    for arch, size in OTHER_BASES.items():
        if arch in archs:
            run.part(f"step_{arch}", ["--arch", arch, *size, "--rank", "32", "--gradient-checkpointing", "--steps", "5",
                                      "--warmup", "2", "--skip-sampling"], limit=150)
        else:
            run.record(f"step_{arch}", {"skipped": f"--arch {arch} does not exist in this checkout"})
    if module_version("xformers"):
        run.part("step_fp16_fine_xformers", [*step, "--attention", "xformers"], limit=90)
    else:
        run.record("step_fp16_fine_xformers", {"skipped": "xformers does not import"})
    run.part("step_fp16_fine_sdpa_compile", [*step, "--compile"], limit=run.left())
    run.save()
    print(f"gpu_check: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
