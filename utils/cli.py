"""What every command-line entry point shares: logging set-up and one-line errors."""

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
