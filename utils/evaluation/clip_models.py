"""Loading a CLIP model and its processor from a local folder or a hub id.

transformers 5 returns a model output from `get_image_features` / `get_text_features`
where 4.x returned the embedding tensor; `ClipEmbedder` gives torchmetrics (and PickScore)
the tensor either way.
"""

from __future__ import annotations

import logging

import torch

from utils.errors import UserError

logger = logging.getLogger(__name__)


class ClipEmbedder(torch.nn.Module):
    """A CLIPModel whose feature methods always return the projected embedding tensor."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    @property
    def config(self):
        return self.clip.config

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        return _embedding(self.clip.get_image_features(pixel_values=pixel_values, **kwargs))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          **kwargs) -> torch.Tensor:
        return _embedding(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs))


def _embedding(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_clip(model: str, processor: str | None, device: str, flag: str,
              local_files_only: bool = False) -> tuple[ClipEmbedder, object]:
    """(embedder in eval mode on `device`, processor); `processor` defaults to the model's own folder/id.

    Anything that stops loading (missing folder, no network for a hub id, not a CLIP model)
    becomes a UserError naming `flag`. `local_files_only`: a hub id must already be downloaded.
    """
    from transformers import CLIPModel, CLIPProcessor

    clip = _from_pretrained(CLIPModel, model, flag, local_files_only)
    clip_processor = _from_pretrained(CLIPProcessor, processor or model, flag, local_files_only)
    logger.info("loaded %s from %s", flag.lstrip("-"), model)
    return ClipEmbedder(clip).eval().requires_grad_(False).to(device), clip_processor


def _from_pretrained(cls, name: str, flag: str, local_files_only: bool):
    try:
        return cls.from_pretrained(name, local_files_only=local_files_only)
    except (OSError, ValueError, KeyError, TypeError) as err:
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"{flag}: cannot load a {cls.__name__} from {name!r} ({detail}); "
                        "give a local folder or a hub id that is cached or reachable") from None
