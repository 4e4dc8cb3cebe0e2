"""benchmarks/toy_pretrain_step.py times the toy world's pretraining step; its modes compute the same loss."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "models" / "toy_world_v2"
_spec = importlib.util.spec_from_file_location("toy_pretrain_step", REPO / "benchmarks" / "toy_pretrain_step.py")
toy_pretrain_step = importlib.util.module_from_spec(_spec)
sys.modules["toy_pretrain_step"] = toy_pretrain_step  # its dataclass looks its module up there
_spec.loader.exec_module(toy_pretrain_step)


def first_loss(mode: str) -> float:
    from utils.toy_world.pretrain import unet_loss

    parts = toy_pretrain_step.step_parts(BASE, mode)
    torch.manual_seed(0)  # the same dropout draws in the temporal convs (the UNet is in training mode)
    with torch.no_grad(), parts.autocast:
        return unet_loss(parts.model, parts.scheduler, parts.latents, parts.context,
                         torch.Generator().manual_seed(1)).item()


def test_the_modes_time_the_same_loss():
    """Same clips, noise and timesteps: classic attention is the same sum (float32 rounding apart),
    bfloat16 the same loss to its ~3 significant digits."""
    fp32 = first_loss("fp32")
    assert fp32 > 0
    assert first_loss("classic_attention") == pytest.approx(fp32, rel=1e-4)  # measured 0
    assert first_loss("bf16") == pytest.approx(fp32, rel=1e-2)  # measured 6e-4


def test_cli_prints_a_json_line(capsys):
    toy_pretrain_step.main(["--mode", "fp32", "--steps", "1", "--warmup", "0", "--threads", "1"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["mode"] == "fp32" and line["s_per_step"] > 0 and line["first_step_s"] > 0
