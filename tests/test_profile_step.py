"""benchmarks/profile_step.py profiles the trainer's loop and prints the tables."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # profile_step imports its sibling benchmark.py
_spec = importlib.util.spec_from_file_location("profile_step", REPO / "benchmarks" / "profile_step.py")
profile_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile_step)

SMALL = ["--width", "32", "--height", "32", "--frames", "4", "--threads", "1", "--steps", "1", "--warmup", "0"]


def test_torch_profile_of_the_loop(tiny_model_dir, capsys):
    profile_step.main(["--model", str(tiny_model_dir), *SMALL, "--top", "5"])
    out = capsys.readouterr().out
    assert "1 profiled steps after 1" in out and "Self CPU time total" in out and "aten::" in out
    assert "ms as diffusers looks it up" in out


def test_python_profile_of_the_loop(tiny_model_dir, capsys):
    profile_step.main(["--model", str(tiny_model_dir), *SMALL, "--python", "--top", "5"])
    out = capsys.readouterr().out
    assert "Ordered by: internal time" in out and "function calls" in out
