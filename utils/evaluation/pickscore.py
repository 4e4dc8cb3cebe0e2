"""PickScore (Kirstain et al., "Pick-a-Pic", NeurIPS 2023), averaged over a video's frames.

Per frame, as the published inference code: logit_scale.exp() * cos(E_image(frame), E_text(prompt))
with the PickScore_v1 CLIP-H model and the processor of CLIP-ViT-H-14-laion2B-s32B-b79K.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from utils.errors import UserError
from utils.evaluation.clip_models import ClipEmbedder, load_clip

logger = logging.getLogger(__name__)

MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScorer:
    def __init__(self, model: ClipEmbedder, processor, device: str):
        self.model, self.processor, self.device = model, processor, device

    @torch.no_grad()
    def score(self, frames: np.ndarray, prompt: str) -> float:
        """Mean PickScore of the frames (uint8 (F, H, W, 3)) for the prompt."""
        images = self.processor(images=list(frames), return_tensors="pt")
        text = self.processor(text=[prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
        image_embeds = self.model.get_image_features(images["pixel_values"].to(self.device))
        text_embeds = self.model.get_text_features(text["input_ids"].to(self.device),
                                                   text["attention_mask"].to(self.device))
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        scores = self.model.logit_scale.exp() * (image_embeds @ text_embeds.T)[:, 0]
        return float(scores.mean())


def load_pickscore(model: str | None, processor: str | None, device: str) -> tuple[PickScorer | None, str | None]:
    """(scorer, None), or (None, why) when PickScore is switched off or not available offline.

    Only local folders and already-downloaded hub ids load: the column is optional, so a missing
    model means a note, not a silent download of several GB (or a minute of retries offline).
    """
    if not model or model.lower() == "none":
        return None, "PickScore skipped (--pickscore-model none)"
    try:
        return PickScorer(*load_clip(model, processor, device, "--pickscore-model", local_files_only=True),
                          device), None
    except UserError as err:
        return None, (f"PickScore skipped: {err}. To compute it: hf download {MODEL}; hf download {PROCESSOR} "
                      "--include '*.json' '*.txt' (or give local copies)")
