"""The command-line layer: what every entry point shares (logging set-up, one-line errors, devices)
and the argument sets several scripts share. Libraries take plain values, never `argparse`.
"""

import argparse
import logging
import os
import sys

from utils.errors import UserError

DEBUG_ENV = "MOTIONDIRECTOR_DEBUG"


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    for noisy in ("httpx", "urllib3", "diffusers", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(main, argv=None) -> int:
    """Run `main(argv)`; bad input ends with `error: ...` on stderr and exit code 2, not a traceback.

    Set MOTIONDIRECTOR_DEBUG=1 (or pass --debug) to see the full traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV) == "1" or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    setup_logging()
    try:
        main(argv)
        return 0
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # out of GPU memory gets advice; anything else is a bug: show it
        if not _is_out_of_memory(err) or debug:
            raise
        print(
            "error: out of GPU memory; set gradient_checkpointing: true, use fewer frames "
            "(n_sample_frames / --num-frames) or a smaller width/height, or mixed_precision: fp16",
            file=sys.stderr,
        )
        return 2


def _is_out_of_memory(err: Exception) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def resolve_device(requested: str | None) -> str:
    """cuda when available and nothing was asked; a requested CUDA device must exist."""
    import torch

    if requested is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        logging.getLogger(__name__).info("using device %s", device)
        return device
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested} was requested but CUDA is not available here; use --device cpu")
    return requested


def process_state():
    """accelerate's view of the processes (one, unless started by `accelerate launch` / torchrun)."""
    import torch
    from accelerate import PartialState

    # Without CUDA, accelerate forms a process group only when told the processes run on the CPU.
    return PartialState(cpu=not torch.cuda.is_available())


# ----------------------------------------------------------------------------- inference flags


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both inference scripts share, with the original's short names and defaults."""
    add = parser.add_argument
    add("-m", "--model", required=True,
        help="diffusers pipeline folder or hub id: ZeroScope / ModelScope, AnimateDiff or Wan 2.1 (see README, Bases)")
    add("--motion_adapter_path", default=None,
        help="AnimateDiff on a Stable Diffusion 1.5 --model: the MotionAdapter folder or hub id to join to it "
             "(the run's motion_adapter_path)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("-p", "--prompt", help="text prompt to generate")
    prompt.add_argument("--prompts_file", help="text file of prompts, one a line (blank lines and # comments "
                                               "skipped): every prompt is generated with every seed")
    add("-n", "--negative-prompt", default=None, help="text to guide away from (default: the empty prompt)")
    add("-o", "--output_dir", default="./outputs/inference", help="folder the videos are written to")
    add("-B", "--batch-size", type=int, default=1, help="videos per sampling call (one file each)")
    add("-W", "--width", type=int, default=None, help="video width in pixels (default: the base's, 384 for ZeroScope)")
    add("-H", "--height", type=int, default=None, help="video height in pixels (default: the base's, 384 for ZeroScope)")
    add("-T", "--num-frames", type=int, default=None, help="number of frames (default: the base's, 16 for ZeroScope)")
    add("-s", "--num-steps", type=int, default=None, help="sampling steps (default: the base's, 30 for ZeroScope)")
    add("-g", "--guidance-scale", type=float, default=None,
        help="classifier-free guidance scale (default: the base's, 12 for ZeroScope)")
    add("-f", "--fps", type=int, default=None, help="frame rate of the written video (default: the base's, 8 for ZeroScope)")
    add("-d", "--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    add("-x", "--xformers", action="store_true", help="use xformers attention (falls back to PyTorch SDPA)")
    add("-S", "--sdp", action="store_true", help="use PyTorch SDPA attention (already the default)")
    add("-lr", "--lora_rank", type=int, default=None,
        help="ignored: the rank is read from the LoRA files (kept so the original commands still run)")
    add("-r", "--seed", type=int, default=None,
        help="random seed; video i of --repeat_num uses seed + i (default: a random seed per video)")
    add("-np", "--noise_prior", type=float, default=0.0,
        help="weight in [0, 1] of the training clip's inverted noise in the starting latents "
             "(0 for multi-video models, 0.1-0.5 for single-video ones)")
    add("-rn", "--repeat_num", type=int, default=1, help="how many videos to generate for the prompt")
    add("--overwrite", action="store_true",
        help="replace an existing file of the same name (default: add a suffix _1, _2, ...)")


def base_options_from_args(args: argparse.Namespace) -> dict:
    """What the base reads beside --model (as the trainer's `base_options` of a config)."""
    return {"motion_adapter_path": args.motion_adapter_path} if args.motion_adapter_path else {}


def settings_from_args(args: argparse.Namespace, write_gif: bool = False):
    from utils.inference.generate import GenerationSettings

    if args.lora_rank is not None:
        logging.getLogger(__name__).info("--lora_rank %d ignored: the rank is read from the LoRA files", args.lora_rank)
    return GenerationSettings(
        prompt=args.prompt or "",  # with --prompts_file, run_generation sets each prompt
        negative_prompt=args.negative_prompt,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        width=args.width,
        height=args.height,
        num_frames=args.num_frames,
        num_steps=args.num_steps,
        guidance_scale=args.guidance_scale,
        fps=args.fps,
        seed=args.seed,
        noise_prior=args.noise_prior,
        repeat_num=args.repeat_num,
        overwrite=args.overwrite,
        write_gif=write_gif,
    )


def prompts_from_args(args: argparse.Namespace) -> list[str]:
    """--prompt, or every prompt of --prompts_file (read now, so a bad file fails before loading)."""
    from utils.io.prompts_file import read_prompts_file

    return [args.prompt] if args.prompt is not None else read_prompts_file(args.prompts_file)


# ----------------------------------------------------------------------------- training flags


def parse_train_args(argv=None) -> tuple[str, list[str]]:
    """`--config X.yaml key=value other.key=value` -> (config path, overrides)."""
    from utils.training.config import DEFAULT_CONFIG, check_override

    parser = argparse.ArgumentParser(
        description="Train MotionDirector (spatial and temporal LoRA) on videos or images.")
    parser.add_argument("--config", type=str, default=DEFAULT_CONFIG,
                        help=f"training config YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys, e.g. learning_rate=1e-4 train_data.n_sample_frames=8")
    args = parser.parse_args(argv)
    for item in args.overrides:
        check_override(item)
    return args.config, list(args.overrides)
