"""The temporal LoRA in the formats stock Wan tools load (written into temporal/export/).

* `pytorch_lora_weights.safetensors`: diffusers keys (`transformer.blocks.N.attn1.to_q.lora_A.weight`),
  what `WanPipeline.load_lora_weights(folder)` reads as is.
* `comfyui_lora.safetensors`: Wan's original module names as ComfyUI maps them
  (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`, `.lora_up.weight`, `.alpha`); diffusers
  converts this layout too. ComfyUI scales by alpha / rank (1 without alpha): alpha = rank, our scale.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

DIFFUSERS_EXPORT = "pytorch_lora_weights.safetensors"
COMFYUI_EXPORT = "comfyui_lora.safetensors"

# diffusers block linear -> Wan's original name (diffusers' convert_wan_transformer_to_diffusers, reversed).
ORIGINAL_NAMES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
_PEFT_KEY = re.compile(r"^(?P<block>blocks\.\d+)\.(?P<linear>.+)\.lora_(?P<kind>[AB])\.weight$")


def diffusers_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"transformer.{key}": tensor for key, tensor in state.items()}


def comfyui_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft keys of the transformer -> Wan's original names with lora_down/lora_up and alpha."""
    out = {}
    for key, tensor in state.items():
        match = _PEFT_KEY.match(key)
        if match is None or match["linear"] not in ORIGINAL_NAMES:
            raise ValueError(f"{key} is not a LoRA weight of a Wan block linear")
        name = f"diffusion_model.{match['block']}.{ORIGINAL_NAMES[match['linear']]}"
        if match["kind"] == "A":
            out[f"{name}.lora_down.weight"] = tensor
            out[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0]))  # alpha = rank: scale 1
        else:
            out[f"{name}.lora_up.weight"] = tensor
    return out


def write_exports(state: dict[str, torch.Tensor], folder: Path) -> list[Path]:
    """Both files in `folder`, each written under a temporary name and renamed when complete."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, converted in ((DIFFUSERS_EXPORT, diffusers_state(state)), (COMFYUI_EXPORT, comfyui_state(state))):
        file = folder / name
        tmp = file.with_name(file.name + ".tmp")
        save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, file)
        written.append(file)
    return written
