"""Text alignment and temporal consistency, both CLIP cosine similarities x 100 (torchmetrics' CLIPScore).

* text alignment: mean over frames of 100 * cos(E_image(frame), E_text(prompt)), the "CLIP score"
  (Hessel et al. 2021, without its 2.5 weight) that MotionDirector reports as text alignment;
* temporal consistency: mean over consecutive frame pairs of 100 * cos(E_image(f_t), E_image(f_t+1)).

torchmetrics clamps the mean at 0 (max(mean, 0)); real CLIP cosines of these pairs are positive.
"""

from __future__ import annotations

import numpy as np
import torch

from utils.evaluation.clip_models import ClipEmbedder


class ClipScorer:
    def __init__(self, model: ClipEmbedder, processor, device: str):
        from torchmetrics.multimodal.clip_score import CLIPScore

        # a callable is torchmetrics' way to take a model it does not know by name (a local folder)
        self.metric = CLIPScore(model_name_or_path=lambda: (model, processor)).to(device)
        self.device = device

    def text_alignment(self, frames: np.ndarray, prompt: str) -> float:
        """Mean CLIP score of each frame (uint8 (F, H, W, 3)) with the prompt."""
        images = self._images(frames)
        return self._score(images, [prompt] * len(images))

    def temporal_consistency(self, frames: np.ndarray) -> float | None:
        """Mean CLIP image-image score of consecutive frames; None for a single frame."""
        if len(frames) < 2:
            return None
        images = self._images(frames)
        return self._score(images[:-1], images[1:])

    def _images(self, frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(self.device)

    @torch.no_grad()
    def _score(self, source, target) -> float:
        self.metric.reset()
        self.metric.update(source, target)
        return float(self.metric.compute())
