"""The run folder's model card (`README.md` with Hugging Face front matter), so that uploading the
folder makes a usable model page: base model, tags, the training prompts, and how to load the
motion LoRA with this project, with stock diffusers and in ComfyUI (what the base exports).
"""

from __future__ import annotations

from pathlib import Path

from models.bases import is_hub_id
from utils.run_folder import EXPORT_DIR, MODEL_CARD


def model_card(base, model_path: str, prompts: list[str], steps: int, run_name: str, options: dict | None = None) -> str:
    """The card's text for a run of `base` from `model_path` (with the base `options` of its config,
    e.g. a motion adapter) on clips captioned `prompts`."""
    hub_base = model_path if is_hub_id(model_path) else None
    tags = ["motiondirector", "lora", "text-to-video", *base.hub_tags]
    front = ["---", "library_name: diffusers"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front += ["tags:", *[f"- {t}" for t in dict.fromkeys(tags)], "---", ""]
    prompt_lines = [f"* {p}" for p in dict.fromkeys(prompts)] or ["* (no caption)"]
    model_arg = hub_base or "<the base model folder>"
    body = [
        f"# MotionDirector motion LoRA: {run_name}",
        "",
        f"A motion learned with [MotionDirector](https://arxiv.org/abs/2310.08465) (dual-path LoRA) on "
        f"{base.label}, from `{model_path}`, {steps} training steps. The temporal LoRA holds the motion; "
        "the spatial LoRA (one per training clip) holds the clips' appearance and is usually left out.",
        "",
        "Trained on clips captioned:",
        "",
        *prompt_lines,
        "",
        "## Use it",
        "",
        "With this project (the noise prior starts from the inverted training clip):",
        "",
        "```bash",
        f"python MotionDirector_inference.py --model {model_arg}{option_flags(options)} --checkpoint_folder . "
        "--checkpoint_index default \\",
        '  --prompt "<a new subject doing the motion>" --noise_prior 0.3',
        "```",
        "",
        "`temporal/lora/<step>_unet.safetensors` holds the motion in this project's format (peft keys, the",
        "LoRA config in the metadata); each `checkpoint-<step>/` holds the same for that step.",
        "",
    ]
    if base.export_files:
        body += [f"Exports in `temporal/{EXPORT_DIR}/` (the same weights, for stock tools):", ""]
        for export in base.export_files:
            body += [f"* `{export.name}`, for {export.tool}:", "",
                     *[f"  {line}" for line in export.how_to_load.format(model=model_arg).splitlines()], ""]
    else:
        body += [f"{base.label} has no stock LoRA loader in today's libraries; use this project's scripts.", ""]
    return "\n".join(front + body).rstrip() + "\n"


def option_flags(options: dict | None) -> str:
    """The inference flags that repeat the run's base options (` --motion_adapter_path X`)."""
    return "".join(f" --{key} {value}" for key, value in (options or {}).items())


def write_model_card(run_dir: Path, base, model_path: str, prompts: list[str], steps: int,
                     options: dict | None = None) -> Path:
    path = Path(run_dir) / MODEL_CARD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(model_card(base, str(model_path), prompts, steps, Path(run_dir).name, options), encoding="utf-8")
    tmp.replace(path)
    return path

