"""Web demo (Gradio), like the original's Hugging Face Space: generate with a trained motion, or train one.

    python app.py [--model ./models/zeroscope_v2_576w] [--port 7860] [--host 127.0.0.1]

Without --model it serves the tiny random model (built into ./models/tiny_t2v on first use), so it
starts anywhere, offline, and shows the workflow; its videos are noise, not results.
"""

import argparse
import functools
import gc
import json
import logging
import os
import random
import sys
from pathlib import Path

# A demo that must work offline makes no telemetry calls unless asked to.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import torch

from models.bases import base_for_model
from models.lora import TEMPORAL
from models.lora_io import find_lora_file
from utils.cli import run_cli
from utils.training.config import load_config, validate_config
from utils.errors import UserError
from utils.run_folder import CACHE_DIR, motion_folder
from utils.inference.generate import (
    SEED_RANGE,
    GenerationSettings,
    LoraRequest,
    check_settings,
    checked_noise_prior,
    device_and_dtype,
    inference_device,
    generate_videos,
    prepare_model,
    with_base_defaults,
)

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent
TINY_MODEL = "./models/tiny_t2v"
TINY_TRAIN_CONFIG = REPO / "configs" / "config_tiny_cpu.yaml"
REAL_TRAIN_CONFIG = REPO / "configs" / "config_single_video.yaml"  # the original's single-video settings
NO_PRIOR_HINT = "set the noise prior to 0, or choose the training run folder (it holds cached_latents/)"


# ----------------------------------------------------------------------------- motions


def resolve_motion(folder: str) -> tuple[Path | None, Path | None]:
    """A trained motion -> (its temporal LoRA file, the run's cached_latents/ or None).

    Takes a training run folder (its final adapters, else its latest checkpoint), a
    checkpoint-<N>/ folder, released weights (checkpoint-default/), or a .../temporal/lora/
    folder in either format. Empty means the base model alone.
    """
    if not folder or not folder.strip():
        return None, None
    path = Path(folder.strip()).expanduser()
    if not path.exists():
        raise UserError(f"motion folder not found: {path}")
    file = find_lora_file(motion_folder(path))  # one-line UserError if none
    # the file's folders: lora/, temporal/, then the run folder or checkpoint-<N>/ and the run folder
    cache = next((p / CACHE_DIR for p in file.parents[:4] if (p / CACHE_DIR).is_dir()), None)
    return file, cache


def base_options(motion_adapter_path: str | None) -> dict:
    """What the base reads beside the model folder (a motion adapter for AnimateDiff on Stable Diffusion)."""
    return {"motion_adapter_path": motion_adapter_path} if motion_adapter_path else {}


@functools.lru_cache(maxsize=1)  # one pipeline in memory; reloaded when the model or motion changes
def _pipeline(model: str, lora: Path | None, modified: float, motion_adapter_path: str | None = None):
    options = base_options(motion_adapter_path)
    device, dtype = device_and_dtype(None, base_for_model(model, options))
    loras = [LoraRequest(lora, TEMPORAL, 1.0)] if lora else []
    return prepare_model(model, loras, device, dtype, options=base_options(motion_adapter_path))


# ----------------------------------------------------------------------------- actions


def generate(model, motion, prompt, negative_prompt, seed, noise_prior, steps, width, height, frames, guidance,
             output_dir="./outputs/app", motion_adapter_path=None, progress=gr.Progress(track_tqdm=True)):
    """One video for the form's settings; returns (video path, status line)."""
    if not prompt or not prompt.strip():
        raise UserError("write a prompt first")
    seed = int(seed) if seed is not None and seed >= 0 else random.randint(*SEED_RANGE)
    settings = GenerationSettings(
        prompt=prompt.strip(), negative_prompt=negative_prompt or None, output_dir=str(Path(output_dir) / "videos"),
        width=int(width), height=int(height), num_frames=int(frames), num_steps=int(steps),
        guidance_scale=float(guidance), seed=seed, noise_prior=float(noise_prior),
    )
    base = base_for_model(model, base_options(motion_adapter_path))
    settings = with_base_defaults(settings, base)
    check_settings(settings, base)
    lora, cache = resolve_motion(motion)
    prior = checked_noise_prior(settings, [seed], cache, NO_PRIOR_HINT, base)
    components = _pipeline(model, lora, lora.stat().st_mtime if lora else 0.0, motion_adapter_path)
    (path,) = generate_videos(components, settings, prior, seeds=[seed])
    return str(path), f"seed {seed}, motion: {lora or 'none (base model)'} -> {path}"


def training_settings(model: str, device: str, config: str | None = None,
                      motion_adapter_path: str | None = None) -> tuple[str, dict]:
    """The config the Train tab starts from and what the device changes in it.

    The tiny model gets the tiny CPU settings; a real model the shipped single-video config of its
    base (fp16, gradient checkpointing), in float32 where there is no GPU (fp16 needs CUDA).
    """
    tiny = default_size(model) < 256
    config = config or str(TINY_TRAIN_CONFIG if tiny else real_train_config(model, motion_adapter_path))
    overrides = {} if device == "cuda" else {"mixed_precision": "no"}
    return config, overrides


def _free_generation_model() -> None:
    """Training loads its own copy of the model: drop the Generate tab's one first."""
    _pipeline.cache_clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train(model, clip, prompt, steps, width, height, frames, output_dir="./outputs/app",
          config=None, motion_adapter_path=None, progress=gr.Progress(track_tqdm=True)):
    """Train a motion on one uploaded clip; returns (run folder, status line)."""
    if not clip:
        raise UserError("upload a training clip first")
    if not prompt or not prompt.strip():
        raise UserError("describe the training clip in the prompt")
    from utils.training.trainer import run  # imports accelerate and peft: only when training

    config, overrides = training_settings(model, inference_device(None), config, motion_adapter_path)
    overrides |= {
        "pretrained_model_path": model,
        "motion_adapter_path": json.dumps(motion_adapter_path or ""),
        "output_dir": str(Path(output_dir) / "train"),
        "dataset_types": "[single_video]",
        "train_data.single_video_path": clip,
        "train_data.single_video_prompt": json.dumps(prompt.strip()),  # quoted: a prompt may hold ':' or ','
        "train_data.width": int(width),
        "train_data.height": int(height),
        "train_data.n_sample_frames": int(frames),
        "validation_data.num_frames": int(frames),
        "validation_data.sample_preview": False,
        "max_train_steps": int(steps),
        "checkpointing_steps": int(steps),
        "logger_type": "none",
    }
    cfg = load_config(config, [f"{k}={v}" for k, v in overrides.items()])
    validate_config(cfg)
    _free_generation_model()
    run_dir = run(cfg)
    return str(run_dir), f"trained {int(steps)} steps on {Path(clip).name}: {run_dir}"


def show_user_errors(fn):
    """Bad input shows the one-line UserError message in the page instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            raise gr.Error(str(err).splitlines()[0]) from None
    return wrapper


# ----------------------------------------------------------------------------- page


def real_train_config(model: str, motion_adapter_path: str | None = None) -> Path:
    """The shipped single-video config of the model's base (the original's for a UNet folder)."""
    try:
        return REPO / "configs" / base_for_model(model, base_options(motion_adapter_path)).single_video_config
    except UserError:  # not a readable pipeline folder: training will say why
        return REAL_TRAIN_CONFIG


def default_size(model: str) -> int:
    """The tiny model's native 64 pixels; 384 (the original's default) for real UNet models; the
    base's default width for others (a DiT has no native size)."""
    try:
        sample_size = json.loads((Path(model) / "unet" / "config.json").read_text())["sample_size"]
    except (OSError, KeyError, ValueError):
        return form_defaults(model)["width"]
    return 384 if 8 * sample_size >= 256 else 8 * sample_size


def form_defaults(model: str, motion_adapter_path: str | None = None) -> dict:
    """The page's starting width, height, frames, steps and guidance: the base's for this folder."""
    try:
        return base_for_model(model, base_options(motion_adapter_path)).folder_sampling(model)
    except UserError:  # not a pipeline folder: the page still opens, and says so on Generate
        return dict(width=384, height=384, num_frames=16, num_steps=30, guidance_scale=12.0)


def build_demo(model: str, output_dir: str, config: str | None = None,
               motion_adapter_path: str | None = None) -> gr.Blocks:
    size, defaults = default_size(model), form_defaults(model, motion_adapter_path)
    start_width, start_height = (size, size) if (Path(model) / "unet").is_dir() else (defaults["width"],
                                                                                       defaults["height"])
    frames_max = max(48, defaults["num_frames"])
    with gr.Blocks(title="MotionDirector") as demo:
        gr.Markdown("# MotionDirector\nCustomise the motion of a text-to-video model, then generate with it.")
        base = gr.Textbox(model, label="Base model folder (diffusers text-to-video)")
        outputs, train_config, adapter = gr.State(output_dir), gr.State(config), gr.State(motion_adapter_path)
        with gr.Tab("Generate"):
            motion = gr.Textbox(label="Motion: training run folder, checkpoint-<N>/ or .../temporal/lora/ "
                                      "(empty: the base model alone)")
            prompt = gr.Textbox("A ball is moving to the right.", label="Prompt")
            negative = gr.Textbox(label="Negative prompt")
            with gr.Row():
                seed = gr.Number(-1, label="Seed (-1: random)", precision=0)
                prior = gr.Slider(0, 1, 0, step=0.05, label="Noise prior (0.1-0.5 for single-video motions)")
                steps = gr.Slider(1, 100, defaults["num_steps"], step=1, label="Steps")
                guidance = gr.Slider(1, 20, defaults["guidance_scale"], step=0.5, label="Guidance scale")
            with gr.Row():
                width = gr.Slider(64, 1024, start_width, step=8, label="Width")
                height = gr.Slider(64, 1024, start_height, step=8, label="Height")
                frames = gr.Slider(1, frames_max, defaults["num_frames"], step=1, label="Frames")
            run_generate = gr.Button("Generate", variant="primary")
            video = gr.Video(label="Video", autoplay=True, loop=True, interactive=False, buttons=["download"])
            status = gr.Textbox(label="Status", interactive=False)
        with gr.Tab("Train"):
            clip = gr.Video(label="Training clip (one motion)", sources=["upload"])
            clip_prompt = gr.Textbox(label="What the clip shows", placeholder="A person is skateboarding.")
            with gr.Row():
                train_steps = gr.Slider(1, 1000, 50, step=1, label="Steps")
                train_width = gr.Slider(64, 1024, start_width, step=8, label="Width")
                train_height = gr.Slider(64, 1024, start_height, step=8, label="Height")
                train_frames = gr.Slider(1, frames_max, defaults["num_frames"], step=1, label="Frames")
            run_train = gr.Button("Train", variant="primary")
            train_status = gr.Textbox(label="Status", interactive=False)
        run_generate.click(show_user_errors(generate), [base, motion, prompt, negative, seed, prior, steps, width,
                                                        height, frames, guidance, outputs, adapter], [video, status])
        # the trained run becomes the motion to generate with
        run_train.click(show_user_errors(train), [base, clip, clip_prompt, train_steps, train_width, train_height,
                                                  train_frames, outputs, train_config, adapter], [motion, train_status])
    return demo


def prepare_base_model(model: str, motion_adapter_path: str | None = None) -> str:
    """The default tiny model is built on first use; any other folder must already be a pipeline."""
    if model == TINY_MODEL and not Path(model).exists():
        from utils.tools.tiny_model import build_tiny_pipeline

        logger.info("building the tiny offline model in %s", model)
        build_tiny_pipeline(model)
    base_for_model(model, base_options(motion_adapter_path))
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="MotionDirector web demo (Gradio).")
    parser.add_argument("--model", default=TINY_MODEL,
                        help=f"diffusers text-to-video folder (default: {TINY_MODEL}, a tiny random model built "
                             "on first use)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--output_dir", default="./outputs/app", help="where videos and training runs are written")
    parser.add_argument("--train_config", default=None,
                        help="training config the Train tab starts from (steps, size and frames come from the form); "
                             "default: configs/config_tiny_cpu.yaml for the tiny model, the base's "
                             "single-video config for a real one (e.g. configs/config_single_video.yaml, "
                             "configs/config_animatediff_single_video.yaml, configs/config_wan_single_video.yaml)")
    parser.add_argument("--motion_adapter_path", default=None,
                        help="AnimateDiff on a Stable Diffusion 1.5 --model: the MotionAdapter folder or hub id")
    args = parser.parse_args(argv)
    model = prepare_base_model(args.model, args.motion_adapter_path)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    demo = build_demo(model, args.output_dir, args.train_config, args.motion_adapter_path)
    demo.queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[args.output_dir],
                        ssr_mode=False, show_error=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
