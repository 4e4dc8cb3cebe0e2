"""Reading and writing LoRA adapters in both formats.

* Ours: `<step>_unet.safetensors` with peft state-dict keys (`<module>.lora_A.weight` / `.lora_B.weight`)
  and the LoRA config as JSON under the metadata key `lora_config`, so loading needs no rank flag.
* The original's: `<step>_unet.pt`, a torch-saved flat list `[up_0, down_0, up_1, down_1, ...]` over the
  path's target layers in UNet registration order (released MotionDirector weights use it).
"""

import json
import os
import re
from pathlib import Path

import torch
from peft.functional import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from models.lora import add_adapter, layer_sides, path_of, set_scale
from utils.errors import UserError
from utils.io.torch_files import load_plain

METADATA_KEY = "lora_config"
_FILE_RE = re.compile(r"^(?P<step>\d+|[A-Za-z0-9_-]+?)_unet(?P<ext>\.safetensors|\.pt)$")


def adapter_state_dict(model: torch.nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors with peft keys (adapter name stripped), float32 on the CPU."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def save_adapter(model: torch.nn.Module, adapter_name: str, file: Path) -> Path:
    """Write one adapter as safetensors + config metadata (atomically: temp file, then rename)."""
    state = adapter_state_dict(model, adapter_name)
    ranks = {k[: -len(".lora_A.weight")]: v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight")}
    most_common_rank = max(set(ranks.values()), key=list(ranks.values()).count)
    config = {
        "r": most_common_rank,
        "lora_alpha": most_common_rank,  # alpha = each layer's rank: the LoRA term is scale * up(down(x))
        "target_modules": sorted(ranks),
        "rank_pattern": ranks,
        "path": path_of(adapter_name),
    }
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(config), "format": "pt"})
    os.replace(tmp, file)
    return file


def find_lora_file(folder: str | Path) -> Path:
    """The adapter file in a `.../lora/` folder: the highest step, safetensors before the original .pt."""
    folder = Path(folder)
    if folder.is_file():
        return folder
    if not folder.is_dir():
        raise UserError(f"LoRA folder not found: {folder} (expected a .../spatial/lora/ or .../temporal/lora/ folder)")
    candidates = [p for p in folder.iterdir() if _FILE_RE.match(p.name)]
    if not candidates:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise UserError(f"no LoRA file (<step>_unet.safetensors or <step>_unet.pt) in {folder}; it holds: {found}")

    def rank(p):
        m = _FILE_RE.match(p.name)
        step = int(m["step"]) if m["step"].isdigit() else -1
        return (step, m["ext"] == ".safetensors")

    return max(candidates, key=rank)


def read_lora_file(file: Path, targets: list[str], path: str) -> dict[str, torch.Tensor]:
    """Either format -> peft-keyed state dict for the given path ("spatial" or "temporal"), whose
    layers the model names `targets` (needed to map the original's unnamed list)."""
    if file.suffix == ".safetensors":
        return _read_safetensors(file)
    return original_list_to_state_dict(_torch_load(file), targets, path, source=file)


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise UserError(f"cannot read LoRA file {file}: {err}; re-save or re-download it") from None


def _torch_load(file: Path):
    return load_plain(file, "LoRA file", "re-save or re-download it")


def original_list_to_state_dict(tensors, targets: list[str], path: str, source="the LoRA file") -> dict[str, torch.Tensor]:
    """Map the original's [up, down, up, down, ...] list onto the path's layers `targets` (peft keys)."""
    if not isinstance(tensors, (list, tuple)) or len(tensors) != 2 * len(targets):
        count = len(tensors) // 2 if isinstance(tensors, (list, tuple)) else "no"
        if isinstance(count, int) and count > len(targets) and count % len(targets) == 0:
            raise UserError(
                f"{source} holds {count // len(targets)} LoRAs per {path} layer: the original's spatial file of a "
                f"{count // len(targets)}-clip run (one LoRA per clip, interleaved), which is not supported; "
                "use that run's temporal LoRA, or a spatial LoRA trained with single_spatial_lora: true"
            )
        raise UserError(
            f"{source} holds {count} LoRA layers but the model's {path} path has {len(targets)}: "
            f"it was trained for another base model or is not a {path} LoRA"
        )
    state = {}
    for i, name in enumerate(targets):
        state[f"{name}.lora_B.weight"] = tensors[2 * i].float()
        state[f"{name}.lora_A.weight"] = tensors[2 * i + 1].float()
    return state


def load_adapter(
    model: torch.nn.Module, folder_or_file: str | Path, adapter_name: str, targets: list[str], scale: float = 1.0,
    dropout: float = 0.0, dtype: torch.dtype | None = None,
) -> Path:
    """Inject an adapter on `targets` (its path's layers), sized from the file, and load its
    weights; returns the file used.

    The weights take `dtype` (default: the model's). Training passes float32, so a resumed or
    `lora_path` adapter keeps every bit of the saved weights under a half-precision model.
    """
    file = find_lora_file(folder_or_file)
    path = path_of(adapter_name)
    state = read_lora_file(file, targets, path)
    ranks = _ranks_matching_model(state, model, targets, path, file)
    add_adapter(model, adapter_name, targets, ranks, dropout=dropout)
    dtype = dtype or next(model.parameters()).dtype
    _cast_adapter(model, adapter_name, dtype)  # before loading: peft made it in the model's dtype
    try:
        result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    except RuntimeError as err:  # shape mismatch inside torch
        raise UserError(f"{file} does not fit the model: {str(err).splitlines()[0]}") from None
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"{file} has layers the model lacks, e.g. {result.unexpected_keys[0]}")
    _cast_adapter(model, adapter_name, dtype)  # and after: loading may assign the file's tensors
    if scale != 1.0:
        set_scale(model, adapter_name, scale)
    return file


def _ranks_matching_model(state, model, targets, path, file) -> dict[str, int]:
    """Per-layer ranks read from the tensors, after checking every layer and shape fits the model."""
    modules = dict(model.named_modules())
    targets = set(targets)
    ranks = {}
    for key, tensor in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[: -len(".lora_A.weight")]
        if name not in targets:
            raise UserError(f"{file}: layer {name} is not a {path} LoRA layer of this model "
                            "(wrong base model or path, or trained with other lora_layers)")
        inputs, outputs = layer_sides(modules[name])
        up = state.get(f"{name}.lora_B.weight")
        if up is None or tensor.shape[1] != inputs or tuple(up.shape[:2]) != (outputs, tensor.shape[0]):
            raise UserError(
                f"{file}: layer {name} has LoRA shapes down {tuple(tensor.shape)} / up "
                f"{tuple(up.shape) if up is not None else None}, the model's layer is "
                f"{inputs} -> {outputs} (wrong base model)"
            )
        ranks[name] = tensor.shape[0]
    missing = targets - set(ranks)
    if missing:
        raise UserError(f"{file} lacks {len(missing)} of the model's {path} layers, e.g. {sorted(missing)[0]}")
    return ranks


def _cast_adapter(model, adapter_name, dtype):
    for n, p in model.named_parameters():
        if "lora_" in n and n.endswith(f".{adapter_name}.weight"):
            p.data = p.data.to(dtype)


def read_lora_config(file: Path) -> dict | None:
    """The `lora_config` metadata of one of our safetensors files (None for other files)."""
    if Path(file).suffix != ".safetensors":
        return None
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None
