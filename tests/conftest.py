"""Shared fixtures: a tiny random pipeline built once per session, and the ../shared reference data."""

import os
import sys
from pathlib import Path

# Tiny models gain nothing from threads, and OpenMP threads on a busy 2-core machine spin-wait
# each other into 100x slower small matmuls. Subprocesses inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ORIGINAL_MD = REPO.parent / "shared" / "compat" / "original_md"

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from utils.tools.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "tiny_t2v", seed=0)


@pytest.fixture(scope="session")
def original_md() -> Path:
    """Artifacts of the original MotionDirector code (skips when ../shared is absent)."""
    if not (ORIGINAL_MD / "reference.json").is_file():
        pytest.skip("../shared/compat/original_md is not available")
    return ORIGINAL_MD
