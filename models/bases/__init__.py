"""The base models, one module each; `base_for_model` picks a model folder's base from its
`model_index.json`, and `load_components` loads it frozen, ready for LoRA.

    zeroscope.py    ZeroScope / ModelScopeT2V: UNet3DConditionModel + CLIP + AutoencoderKL, DDIM
    animatediff.py  AnimateDiff: SD 1.5 UNet + MotionAdapter (UNetMotionModel) + CLIP + AutoencoderKL, DDIM
    wan.py          Wan 2.1 T2V: WanTransformer3DModel (DiT) + UMT5 + AutoencoderKLWan, flow matching
                    (wan_layers: LoRA layer choice, wan_parts: its pieces, wan_exports, wan_tiny)
    spec.py         what every base states (VideoBase) and the loaded Components
    unet_base.py    what the UNet bases share: CLIP text, per-frame VAE, DDPM noise, DDIM inversion
    tiny_parts.py   pieces of the tiny random pipelines the tests build

Adding a base is one module with a VideoBase subclass and one line in BASES.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.bases.animatediff import AnimateDiffBase
from models.bases.spec import SPATIAL, TEMPORAL, Components, VideoBase
from models.bases.wan import WanBase
from models.bases.zeroscope import ZeroScopeBase
from utils.errors import UserError

__all__ = ["BASES", "SPATIAL", "TEMPORAL", "Components", "VideoBase", "base_for_model", "get_base",
           "load_components", "read_model_index"]

BASES: dict[str, VideoBase] = {base.name: base for base in (ZeroScopeBase(), AnimateDiffBase(), WanBase())}


def get_base(name: str) -> VideoBase:
    if name not in BASES:
        raise UserError(f"unknown base {name!r}; choose one of {', '.join(BASES)}")
    return BASES[name]


def is_hub_id(model_path: str) -> bool:
    """`owner/name` that is not a local path."""
    return (not Path(model_path).exists() and not model_path.startswith((".", "/", "~"))
            and model_path.count("/") == 1)


def read_model_index(model_path: str) -> dict:
    """The pipeline's model_index.json, from a local folder or (downloaded once) a hub id."""
    path = Path(model_path)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise UserError(f"{model_path} is not a diffusers pipeline folder: no model_index.json (give a "
                            f"folder of {', '.join(b.label for b in BASES.values())})")
    elif is_hub_id(model_path):
        try:
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(model_path, "model_index.json"))
        except Exception as err:
            raise UserError(f"cannot read model_index.json of hub id {model_path}: {str(err).splitlines()[0]} "
                            "(check the id and the network, or give a local folder)") from None
    else:
        raise UserError(f"model folder not found: {model_path} (give a diffusers pipeline folder such as "
                        "./models/zeroscope_v2_576w/, or a hub id like cerspense/zeroscope_v2_576w)")
    try:
        return json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {index}: {err}") from None


def base_for_model(model_path: str, options: dict | None = None) -> VideoBase:
    """The base that loads this pipeline folder or hub id (checked: a bad folder is a UserError)."""
    index = read_model_index(str(model_path))
    kind = index.get("_class_name", "")
    for base in BASES.values():
        if kind in base.pipeline_classes:
            if Path(model_path).is_dir():
                base.check_folder(Path(model_path))
            base.check_options(index, options or {})
            return base.for_folder(str(model_path))
    known = ", ".join(f"{c} ({b.label})" for b in BASES.values() for c in b.pipeline_classes)
    raise UserError(f"{model_path} is a {kind or 'pipeline without _class_name'}, which no base loads; "
                    f"supported: {known}")


def load_components(model_path: str, device="cpu", dtype: torch.dtype = torch.float32,
                    options: dict | None = None) -> Components:
    """The pipeline's frozen models (denoiser prepared as its base runs it) and scheduler."""
    base = base_for_model(model_path, options)
    try:
        components = base.load(str(model_path), device, dtype, options or {})
    except OSError as err:
        raise UserError(f"cannot load the model from {model_path}: {str(err).splitlines()[0]}") from None
    for model in (components.text_encoder, components.vae, components.denoiser):
        model.requires_grad_(False)
        if not (model is components.text_encoder and base.text_encoder_on_cpu):
            model.to(device)
    components.text_encoder.eval()
    components.vae.eval()
    return components
