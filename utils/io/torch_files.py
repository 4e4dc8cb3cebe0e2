"""Reading `.pt` files that may come from elsewhere (a downloaded checkpoint or latent cache).

`torch.load(..., weights_only=True)` rebuilds tensors and plain containers (dict, list, tuple,
str, numbers, None) and refuses any other global, so a file cannot run code when loaded. A
refused file is a one-line UserError that names what it tried to import.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

# Training states written before RNG states were stored as lists held numpy's as an ndarray of
# uint32 keys: rebuilding a numeric ndarray runs no code. (numpy 2 pickles it under numpy._core,
# numpy 1 under numpy.core.)
LEGACY_NUMPY = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np._core.multiarray._reconstruct,
                (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]


def load_plain(file: str | Path, what: str, how_to_fix: str, allow: list | None = None):
    """The content of `file` (tensors on the CPU), or a one-line UserError: `what` names the
    file's kind in the message, `how_to_fix` ends it; `allow` adds safe globals."""
    try:
        with torch.serialization.safe_globals(allow or []):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(file)
        if unsafe:
            raise UserError(f"refusing to load {what} {file}: it would import {', '.join(unsafe[:3])} (a pickle "
                            f"can run code; only tensors and plain values are read); {how_to_fix}") from None
        raise UserError(f"cannot read {what} {file}: not a torch file of tensors; {how_to_fix}") from None
    except Exception as err:
        raise UserError(f"cannot read {what} {file}: {_first_line(err)}; {how_to_fix}") from None


def _unsafe_globals(file) -> list[str]:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:  # not a zip file of torch's format: the caller says "cannot read"
        return []


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
