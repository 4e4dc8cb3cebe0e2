"""Prompt embeddings computed once per distinct prompt: the text encoder is frozen."""

import torch


class PromptCache:
    """`cache(prompts)` -> (len(prompts), L, D) text states, each prompt encoded once."""

    def __init__(self, components, device=None):
        self.components = components
        # Kept on `device` (the training device): a host-to-device copy every step would make
        # CUDA wait for the work already queued.
        self.device = device
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            if p not in self._cache:
                self._cache[p] = self.components.encode_prompts([p])[0].to(self.device)
        return torch.stack([self._cache[p] for p in prompts])
