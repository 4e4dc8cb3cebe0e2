"""Train MotionDirector: `python MotionDirector_train.py --config configs/<name>.yaml [key=value ...]`."""

import sys

from utils.cli import parse_train_args, process_state, run_cli


def main(argv: list[str]) -> None:
    from utils.training.config import load_config, validate_config
    from utils.training.trainer import run

    config_path, overrides = parse_train_args(argv)
    cfg = load_config(config_path, overrides)
    validate_config(cfg)
    run_dir = run(cfg)
    if process_state().is_main_process:  # one line, also under `accelerate launch`
        print(f"run folder: {run_dir}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
