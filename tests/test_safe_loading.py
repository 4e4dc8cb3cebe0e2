"""Files from elsewhere load without running code: training states, latent caches, LoRA lists."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.inference.noise_prior import NoisePrior
from utils.run_folder import STATE_FILE
from utils.training.checkpoints import load_training_state, rng_state, set_rng_state
from utils.training.latent_cache import load_cached


class RunsCode:
    """Unpickling this object calls exec: what a hostile .pt file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _hostile(path: Path, marker: Path, **content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"latents": torch.zeros(4, 2, 2, 2), **content, "payload": RunsCode(marker)}, path)
    return path


def _assert_refused(err: pytest.ExceptionInfo, marker: Path) -> None:
    message = str(err.value)
    assert "\n" not in message and message.startswith("refusing to load") and "builtins.exec" in message
    assert not marker.exists()


def test_a_training_state_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran.txt"
    checkpoint = tmp_path / "run" / "checkpoint-2"
    _hostile(checkpoint / STATE_FILE, marker, step=2)
    with pytest.raises(UserError) as err:
        load_training_state(checkpoint)
    _assert_refused(err, marker)


def test_a_latent_cache_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran.txt"
    file = _hostile(tmp_path / "cached_latents" / "cached_0.pt", marker)
    with pytest.raises(UserError) as err:
        load_cached(file.parent)  # training's cached_latent_dir
    _assert_refused(err, marker)
    with pytest.raises(UserError) as err:
        NoisePrior.from_folder(file.parent, "fix it").entry(file)  # inference's noise prior
    _assert_refused(err, marker)


def test_rng_state_is_plain_and_restores_every_generator():
    """Stored as tensors, tuples, lists and numbers: weights_only=True reads it with no allow-list."""
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    state = rng_state()
    expected = (random.random(), np.random.standard_normal(), torch.rand(1).item())
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert (random.random(), np.random.standard_normal(), torch.rand(1).item()) == expected


def test_a_training_state_of_the_previous_format_still_resumes(tmp_path):
    """Before, numpy's state was saved as get_state()'s tuple with an ndarray: allowed, and exact."""
    np.random.seed(7)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = np.random.random(3)
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    torch.save({"step": 1, "rng": old}, checkpoint / STATE_FILE)
    np.random.seed(0)
    set_rng_state(load_training_state(checkpoint)["rng"])
    assert (np.random.random(3) == expected).all()


def test_the_originals_cached_latents_load(original_md):
    (item,) = load_cached(original_md / "cached_latents")
    assert item["latents"].shape == (4, 8, 8, 8) and item["prompt"] == "A car is running on the road."
