"""The step predictor (benchmarks/estimate.py) against hand-checkable answers, and finer checkpointing."""

import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from peft import get_peft_model_state_dict

from helpers import ZEROSCOPE
from models.checkpointing import checkpointing_paused, disable_gradient_checkpointing, enable_gradient_checkpointing
from models.lora import TEMPORAL

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import estimate  # noqa: E402

_spec = importlib.util.spec_from_file_location("benchmark", REPO / "benchmarks" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

RANK = 4
TINY = ZEROSCOPE.architecture("tiny")


def _predict(setup):
    model = estimate.build_meta_denoiser(ZEROSCOPE, TINY["denoiser"], RANK)
    return model, estimate.estimate_denoiser(ZEROSCOPE, model, setup, TINY)


def _tiny_setup(**overrides):
    values = dict(arch="tiny", width=32, height=32, frames=4, rank=RANK, precision="fp16", checkpointing="off")
    values.update(overrides)
    return estimate.Setup(**values)


@pytest.fixture(scope="module")
def tiny_fp16_prediction():
    return _predict(_tiny_setup())


def test_weights_lora_and_adam_state_are_exact(tiny_fp16_prediction):
    unet, r = tiny_fp16_prediction
    frozen = [p for n, p in unet.named_parameters() if "lora_" not in n]
    lora = [p for n, p in unet.named_parameters() if "lora_" in n]
    assert all(p.dtype == torch.float16 for p in frozen) and all(p.dtype == torch.float32 for p in lora)
    frozen_bytes = sum(p.numel() for p in frozen) * 2
    lora_bytes = sum(p.numel() for p in lora) * 4
    assert r["weights_gb"] * estimate.GB == frozen_bytes
    assert r["lora_params_gb"] * estimate.GB == lora_bytes
    # Every parameter the tracker saw is a UNet weight; AdamW keeps exp_avg and exp_avg_sq per LoRA weight.
    assert r["peak_breakdown_bytes"]["Parameter"] == frozen_bytes + lora_bytes
    assert r["peak_breakdown_bytes"]["Optstate"] == 2 * lora_bytes
    assert r["vae_gb"] == 0  # the tiny arch has no resident VAE counted
    total = sum(v for k, v in r["peak_breakdown_bytes"].items() if k != "Total")
    assert r["peak_breakdown_bytes"]["Total"] == total
    assert r["predicted_peak_gb"] * estimate.GB == total


def test_step_time_is_flops_over_40_percent_of_the_datasheet_peak(tiny_fp16_prediction):
    _, r = tiny_fp16_prediction
    assert r["predicted_s_per_step"]["H100 SXM"] == pytest.approx(r["flops_per_step"] / (0.4 * 989.4e12))
    assert r["predicted_s_per_step"]["A5000"] == pytest.approx(r["flops_per_step"] / (0.4 * 111.1e12))


def test_traced_flops_equal_the_flops_of_a_real_cpu_step(tiny_model_dir):
    """fp32, no checkpointing: the meta trace counts what FlopCounterMode counts on real CPU tensors,
    except attention, which FlopCounterMode has no formula for on the CPU (its CPU flash kernel)."""
    setup = _tiny_setup(precision="fp32")
    _, r = _predict(setup)
    args = benchmark.parse_args(["--model", str(tiny_model_dir), "--device", "cpu", "--width", "32", "--height",
                                 "32", "--frames", "4", "--rank", str(RANK), "--threads", "1"])
    components = benchmark.build_components(args, torch.device("cpu"), torch.float32)
    latents = torch.zeros(1, 4, 4, 4, 4)
    bench = benchmark.TrainBench(args, components, latents, torch.device("cpu"))
    seed = next(s for s in range(100) if not benchmark.spatial_skipped(s))
    bench.embeddings()  # the prompt is encoded once, before the steps
    assert 0 < r["attention_flops_per_step"] < r["flops_per_step"]
    assert benchmark.count_train_flops(bench, [seed]) == r["flops_per_step"] - r["attention_flops_per_step"]


def test_flops_of_one_linear_layer():
    """The counter FLOPs formula: 2 * batch * in * out for a linear's forward."""
    counter = estimate.FlopCount()
    with torch.device("meta"), counter:
        torch.nn.functional.linear(torch.empty(3, 5), torch.empty(7, 5))
    assert counter.total == 2 * 3 * 5 * 7


def test_cuda_autocast_emulation_follows_cuda_lists():
    emulation = estimate.CudaAutocast(torch.float16)
    x = torch.empty(2, 32, 4, 4, device="meta")
    with emulation, emulation.autocast():
        conv = torch.nn.functional.conv2d(x, torch.empty(32, 32, 1, 1, device="meta"))
        norm = torch.nn.functional.group_norm(conv, 8)
        q = torch.empty(1, 2, 16, 5, device="meta")
        attention = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert (conv.dtype, norm.dtype) == (torch.float16, torch.float32)  # CPU autocast keeps group_norm in fp16
    assert attention.dtype == torch.float16 and attention.shape == q.shape  # flash, head dim padded 5 -> 8


def test_checkpointing_lowers_the_predicted_activations():
    peaks = {}
    for kind in estimate.CHECKPOINTING:
        setup = _tiny_setup(checkpointing=kind, precision="fp32", width=64, height=64)
        peaks[kind] = _predict(setup)[1]["predicted_peak_gb"]
    assert peaks["fine"] < peaks["block"] < peaks["off"]


def test_estimate_cli_ends_with_the_prediction_json(capsys):
    benchmark.main(["--estimate", "--arch", "tiny", "--width", "32", "--height", "32", "--frames", "4",
                    "--rank", "4", "--precision", "fp16", "--gradient-checkpointing"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["predicted_peak_gb"] > 0 and result["flops_per_step"] > 0
    assert result["checkpointing"] == ZEROSCOPE.default_granularity


def test_cpu_prediction_matches_the_measured_step(tiny_model_dir, capsys):
    """The same trace with the CPU's kernels against the CPU allocator's peak in one real step."""
    result = benchmark.main(["--estimate-check", "--model", str(tiny_model_dir), "--width", "32", "--height", "32",
                             "--frames", "4", "--rank", "4", "--threads", "1", "--checkpointing", "fine"])
    assert result["measured_over_predicted"] == pytest.approx(1.0, abs=0.02)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpointing"] == "fine"


def test_modelscope_unet_is_the_diffusers_default_unet3d():
    """diffusers converts the ModelScope checkpoint into UNet3DConditionModel() with default arguments."""
    from diffusers import UNet3DConditionModel

    defaults = inspect.signature(UNet3DConditionModel.__init__).parameters
    for key, value in ZEROSCOPE.architecture("modelscope")["denoiser"].items():
        if key != "sample_size":  # only the default sample size of generation; no effect on training
            assert defaults[key].default == value, key


# ---------------------------------------------------------------- finer checkpointing

def _bench(model_dir):
    args = benchmark.parse_args(["--model", str(model_dir), "--device", "cpu", "--width", "32", "--height", "32",
                                 "--frames", "4", "--rank", "4", "--threads", "1"])
    components = benchmark.build_components(args, torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 4, 4, 4)
    bench = benchmark.TrainBench(args, components, latents, torch.device("cpu"))
    torch.manual_seed(1)
    for plist in bench.adapters.params.values():  # non-zero up weights: every path has gradients
        for p in plist:
            p.data = torch.randn_like(p) * 0.05
    for module in bench.unet.modules():  # temporal outputs start at zero: randomise them
        if isinstance(module, TemporalConvLayer):
            torch.nn.init.normal_(module.conv4[-1].weight, std=0.05)
        elif isinstance(module, TransformerTemporalModel):
            torch.nn.init.normal_(module.proj_out.weight, std=0.05)
    return bench


def _grads(bench):
    return {name: [p.grad.clone() for p in plist if p.grad is not None]
            for name, plist in bench.adapters.params.items()}


def test_fine_checkpointing_gives_the_gradients_of_none(tiny_model_dir):
    bench = _bench(tiny_model_dir)
    seed = next(s for s in range(100) if not benchmark.spatial_skipped(s))
    keys = list(bench.unet.state_dict())
    peft_keys = list(get_peft_model_state_dict(bench.unet, adapter_name=TEMPORAL))
    plain = bench.forward_backward(seed), _grads(bench)
    bench.zero_grad()
    enable_gradient_checkpointing(bench.unet, ZEROSCOPE.checkpoint_targets(bench.unet, "fine"))
    assert list(bench.unet.state_dict()) == keys
    assert list(get_peft_model_state_dict(bench.unet, adapter_name=TEMPORAL)) == peft_keys
    fine = bench.forward_backward(seed), _grads(bench)
    disable_gradient_checkpointing(bench.unet)
    assert fine[0].spatial == pytest.approx(plain[0].spatial, abs=1e-6)
    assert fine[0].temporal == pytest.approx(plain[0].temporal, abs=1e-6)
    for name, grads in plain[1].items():
        assert len(grads) == len(fine[1][name]) > 0, name
        for a, b in zip(grads, fine[1][name]):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_checkpointing_is_paused_and_restored_and_undone(tiny_model_dir):
    bench = _bench(tiny_model_dir)
    unet = bench.unet
    fine = ZEROSCOPE.checkpoint_targets(unet, "fine")
    assert unet.down_blocks[0].resnets[0] in fine and unet.down_blocks[0] not in fine
    enable_gradient_checkpointing(unet, fine)
    with checkpointing_paused(unet):  # as validation samples: no recomputation, then the same modules again
        assert not any("forward" in vars(m) for m in unet.modules())
    assert {m for m in unet.modules() if "forward" in vars(m)} == set(fine)
    disable_gradient_checkpointing(unet)
    assert not any("forward" in vars(m) for m in unet.modules())
    with pytest.raises(ValueError, match="granularity"):
        ZEROSCOPE.checkpoint_targets(unet, "layer")
