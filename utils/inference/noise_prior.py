"""The inversion noise prior (SPEC.md §5): sampling starts from a mix of the inverted training
clip and fresh noise, sqrt(p) * inverted + sqrt(1 - p) * noise. The inversion itself is the base's
(`VideoBase.invert`: DDIM for the UNets, the flow ODE for flow-matching bases).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.training.latent_cache import cached_files, invert_clip, load_cached_file

logger = logging.getLogger(__name__)


def mix_noise_prior(inverted: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    """Initial latents sqrt(p) * inverted + sqrt(1 - p) * noise; p = 0 is plain noise."""
    if not 0.0 <= p <= 1.0:
        raise UserError(f"noise prior must be in [0, 1], got {p}")
    if inverted.shape != noise.shape:
        raise ValueError(f"inverted {tuple(inverted.shape)} and noise {tuple(noise.shape)} differ in shape")
    return p**0.5 * inverted + (1 - p) ** 0.5 * noise


def prepare_prior_latents(
    inverted: torch.Tensor, batch_size: int, num_frames: int, height_latent: int, width_latent: int
) -> torch.Tensor:
    """Fit one inverted clip, (C, F, h, w) or (1, C, F, h, w), to (batch_size, C, F, H, W).

    Each frame is resized bilinearly when (h, w) differs from the requested
    latent size, then the clip is repeated over the batch. The frame count must
    match: the original silently kept the cached clip's frame count and ignored
    the requested one; we refuse instead.
    """
    if inverted.dim() == 5:
        if inverted.shape[0] != 1:
            raise ValueError(f"expected one inverted clip, got a batch of {inverted.shape[0]}")
        inverted = inverted[0]
    if inverted.dim() != 4:
        raise ValueError(f"inverted latents must be (C, F, h, w) or (1, C, F, h, w), got {tuple(inverted.shape)}")
    channels, frames, height, width = inverted.shape
    if frames != num_frames:
        raise UserError(
            f"the cached inversion noise has {frames} latent frames but {num_frames} were requested; "
            f"generate as many frames as the training clip or set the noise prior to 0"
        )
    if (height, width) != (height_latent, width_latent):
        per_frame = inverted.permute(1, 0, 2, 3)  # (F, C, h, w): resize each frame as an image
        per_frame = F.interpolate(per_frame, size=(height_latent, width_latent), mode="bilinear")
        inverted = per_frame.permute(1, 0, 2, 3)
    return inverted.unsqueeze(0).repeat(batch_size, 1, 1, 1, 1).contiguous()


class NoisePrior:
    """The training run's cached clips and their inverted latents.

    Which clip a video uses is drawn from its seed. A clip cached without `inversion_noise`
    is inverted once and the result written back into its file for the next run.
    """

    def __init__(self, files: list[Path]):
        self.files = files
        self._entries: dict[Path, dict] = {}

    @classmethod
    def from_folder(cls, folder: str | Path, how_to_fix: str) -> "NoisePrior":
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"--noise_prior > 0 needs the training run's cached_latents/ folder, "
                            f"not found at {folder}; {how_to_fix}")
        try:
            return cls(cached_files(folder))
        except UserError:
            raise UserError(f"no cached_<i>.pt files in {folder} for the noise prior; {how_to_fix}") from None

    def pick(self, seed: int, num_frames: int, base) -> Path:
        """The seed's draw among the cached clips of `num_frames` frames (a single video's last
        chunk may be shorter than the others: it is never drawn for the full length)."""
        wanted = base.latent_frames(num_frames)
        fitting = [f for f in self.files if self.latent_frames(f) == wanted]
        if not fitting:
            counts = sorted({base.pixel_frames(self.latent_frames(f)) for f in self.files})
            raise UserError(f"no cached training clip has {num_frames} frames (they have "
                            f"{', '.join(map(str, counts))}); set --num-frames to one of those or use --noise_prior 0")
        return random.Random(seed).choice(fitting)

    def latent_frames(self, file: Path) -> int:
        return self.entry(file)["latents"].shape[1]

    def entry(self, file: Path) -> dict:
        if file not in self._entries:
            self._entries[file] = load_cached_file(file, "give the cached_latents/ of a training run or "
                                                   "--noise_prior 0")
        return self._entries[file]

    def inverted(self, file: Path, components) -> torch.Tensor:
        """(C, f, h, w) inverted latents of the clip, computed and stored once when missing."""
        entry = self.entry(file)
        if "inversion_noise" not in entry:
            entry["inversion_noise"] = invert_clip(entry["latents"], components)
            write_back(file, entry)
        return entry["inversion_noise"].float()


def write_back(file: Path, entry: dict) -> None:
    """Store the inversion in the cache file; a temp file + rename never leaves a half-written one."""
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")  # per process: two may write at once
    try:
        torch.save(entry, tmp)
        os.replace(tmp, file)
        logger.info("stored the inversion in %s for later runs", file)
    except OSError as err:  # e.g. read-only downloaded weights: only the reuse is lost
        tmp.unlink(missing_ok=True)
        logger.warning("could not store the inversion in %s (%s); it will be recomputed next time", file, err)
