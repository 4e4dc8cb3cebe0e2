"""The step predictor (benchmarks/estimate.py) against hand-checkable answers, and finer checkpointing."""

import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.resnet import TemporalConvLayer
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from peft import get_peft_model_state_dict

from helpers import ZEROSCOPE
from models.checkpointing import checkpointing_paused, disable_gradient_checkpointing, enable_gradient_checkpointing
from models.lora import SPATIAL, TEMPORAL

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import cuda_emulation  # noqa: E402
import estimate  # noqa: E402

_spec = importlib.util.spec_from_file_location("benchmark", REPO / "benchmarks" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

RANK = 4
TINY = ZEROSCOPE.architecture("tiny")


def _predict(setup, with_phases=True):
    model = estimate.build_meta_denoiser(ZEROSCOPE, TINY["denoiser"], RANK, setup.videos)
    return model, estimate.estimate_denoiser(ZEROSCOPE, model, setup, TINY, with_phases=with_phases)


def _tiny_setup(**overrides):
    values = dict(arch="tiny", width=32, height=32, frames=4, rank=RANK, precision="fp16", checkpointing="off")
    values.update(overrides)
    return estimate.Setup(**values)


@pytest.fixture(scope="module")
def tiny_fp16_prediction():
    return _predict(_tiny_setup())


def _base_linears(unet, path):
    modules = dict(unet.named_modules())
    return [modules[name].get_base_layer() for name in ZEROSCOPE.lora_targets(unet, path)]


def test_weights_lora_adam_state_and_phases_add_up(tiny_fp16_prediction):
    unet, r = tiny_fp16_prediction
    frozen = [p for n, p in unet.named_parameters() if "lora_" not in n]
    lora = [p for n, p in unet.named_parameters() if "lora_" in n]
    assert all(p.dtype == torch.float16 for p in frozen) and all(p.dtype == torch.float32 for p in lora)
    frozen_bytes = sum(p.numel() for p in frozen) * 2
    # LoRA weights by hand from the adapted layers: (in + out) * rank float32 values per layer, both paths
    lora_bytes = 4 * RANK * sum(layer.in_features + layer.out_features
                                for path in (SPATIAL, TEMPORAL) for layer in _base_linears(unet, path))
    assert r["weights_gb"] * estimate.GB == frozen_bytes
    assert r["lora_params_gb"] * estimate.GB == lora_bytes
    # Every parameter the tracker saw is a UNet weight; AdamW keeps exp_avg and exp_avg_sq per LoRA weight.
    assert r["peak_breakdown_bytes"]["Parameter"] == frozen_bytes + lora_bytes
    assert r["peak_breakdown_bytes"]["Optstate"] == 2 * lora_bytes
    total = sum(v for k, v in r["peak_breakdown_bytes"].items() if k != "Total")
    assert r["peak_breakdown_bytes"]["Total"] == total
    # the step's phase: the step's peak + the resident VAE + two cuBLAS workspaces (main and autograd thread)
    step = r["phases"]["training_step"]
    assert step["peak_gb"] * estimate.GB == total + r["vae_gb"] * estimate.GB + 2 * 32 * 2**20
    assert list(r["phases"]) == ["caching", "inversion", "training_step", "validation"]
    assert r["predicted_peak_gb"] == max(p["peak_gb"] for p in r["phases"].values())
    assert r["phases"][r["peak_phase"]]["peak_gb"] == r["predicted_peak_gb"]
    # caching and inversion run before the LoRAs exist: only frozen weights (UNet, VAE) resident
    vae_bytes = r["vae_gb"] * estimate.GB
    for name in ("caching", "inversion"):
        assert r["phases"][name]["breakdown_bytes"]["Parameter"] == frozen_bytes + vae_bytes
    validation = r["phases"]["validation"]["breakdown_bytes"]
    assert validation["Parameter"] == frozen_bytes + lora_bytes + vae_bytes and validation["Optstate"] == 2 * lora_bytes
    assert "predicted_s_per_step" not in r  # no time without a measurement


def test_ten_videos_add_nine_spatial_loras_with_their_adam_state(tiny_fp16_prediction):
    """Each extra clip's spatial LoRA holds its weights and AdamW's exp_avg and exp_avg_sq; no gradient
    (only the clip trained on has one); nothing else in the step changes."""
    unet, one = tiny_fp16_prediction
    _, ten = _predict(_tiny_setup(videos=10), with_phases=False)
    spatial = 4 * RANK * sum(layer.in_features + layer.out_features for layer in _base_linears(unet, SPATIAL))
    added = {k: ten["peak_breakdown_bytes"][k] - one["peak_breakdown_bytes"][k] for k in ("Parameter", "Optstate",
                                                                                          "Gradient", "Total")}
    assert added == {"Parameter": 9 * spatial, "Optstate": 9 * 2 * spatial, "Gradient": 0, "Total": 9 * 3 * spatial}
    assert (ten["step_peak_gb"] - one["phases"]["training_step"]["peak_gb"]) * estimate.GB == 9 * 3 * spatial


def test_a_frozen_fp32_weight_adds_its_bytes_and_the_half_copy_autocast_saves():
    """By hand: a frozen Linear(64 -> 32) under fp16 autocast, input needing its gradient. fp16 weights:
    4096 B of weight, 2048 B of input, 1024 B of output. fp32 weights: 8192 B of weight, and autocast
    casts the weight to fp16 on every call (it caches only leaf tensors that require grad); the
    backward to the input needs that copy, so it stays: 4096 B more. Without the input's gradient
    the copy is freed at once."""
    def after_forward(dtype, input_grad):
        layer = torch.nn.Linear(64, 32, bias=False, device="meta", dtype=dtype).requires_grad_(False)
        emulation = cuda_emulation.CudaAutocast(torch.float16)
        tracker = estimate._frozen_aware_tracker()
        tracker.track_external(layer)
        with tracker, emulation, emulation.autocast():
            x = torch.randn(16, 64, device="meta", dtype=torch.float16, requires_grad=input_grad)
            y = layer(x)
            snapshot = tracker.get_tracker_snapshot()[torch.device("meta")]
        assert y.dtype == torch.float16
        return {getattr(k, "value", k): v for k, v in snapshot.items() if getattr(k, "value", k) in
                ("Parameter", "Activation")}

    assert after_forward(torch.float16, True) == {"Parameter": 4096, "Activation": 2048 + 1024}
    assert after_forward(torch.float32, True) == {"Parameter": 8192, "Activation": 2048 + 1024 + 4096}
    assert after_forward(torch.float32, False) == {"Parameter": 8192, "Activation": 2048 + 1024}


def test_frozen_fp32_unet_adds_its_weight_bytes_and_the_saved_half_copies(tiny_fp16_prediction):
    """The tiny UNet, checkpointing off: weights + 2 B per frozen parameter exactly; activations +
    the fp16 copies of the frozen linear/conv weights whose input needs a gradient in the temporal
    forward (counted here on a real CPU forward), less what the fp16 model spent on fp32 copies of
    norm weights (group/layer norm run in fp32) and what the backward freed before the peak."""
    unet, half = tiny_fp16_prediction
    _, full = _predict(_tiny_setup(frozen_dtype="fp32"), with_phases=False)
    assert full["frozen_dtype"] == "fp32"
    frozen_params = sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n)
    delta = {k: full["peak_breakdown_bytes"][k] - half["peak_breakdown_bytes"][k] for k in half["peak_breakdown_bytes"]}
    assert delta["Parameter"] == 2 * frozen_params
    assert delta["Optstate"] == delta["Gradient"] == 0
    copies, norms = _weights_seeing_gradients()
    assert 2 * copies - 4 * norms <= delta["Activation"] <= 2 * copies
    assert delta["Total"] == delta["Parameter"] + delta["Activation"] + delta["Temp"]


def _weights_seeing_gradients() -> tuple[int, int]:
    """(frozen linear/conv weights, norm weights and biases) whose module input needs a gradient in
    the temporal forward of the tiny UNet with both LoRAs, counted with hooks on a real CPU forward."""
    from peft.tuners.lora import LoraLayer

    from models.lora import activate_fast, add_adapter, lora_layers

    torch.manual_seed(0)
    unet = ZEROSCOPE.build_denoiser(TINY["denoiser"]).requires_grad_(False)
    for name, path in ((TEMPORAL, TEMPORAL), (SPATIAL, SPATIAL)):
        add_adapter(unet, name, ZEROSCOPE.lora_targets(unet, path), RANK, 0.1)
    activate_fast(lora_layers(unet), [TEMPORAL, SPATIAL])
    for n, p in unet.named_parameters():
        p.requires_grad_(f".{TEMPORAL}." in n)
    seen, norms = {}, {}

    def on_linear(module, args):
        if args[0].requires_grad:
            weight = module.get_base_layer().weight if isinstance(module, LoraLayer) else module.weight
            seen[id(weight)] = weight.numel()

    def on_norm(module, args):
        if args[0].requires_grad and module.weight is not None:
            norms[id(module)] = module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)

    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) or (type(module) in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)
                                             and "lora_" not in name and "base_layer" not in name):
            module.register_forward_pre_hook(on_linear)
        elif isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            module.register_forward_pre_hook(on_norm)
    unet.train()(torch.randn(1, 4, 4, 4, 4), torch.tensor([10]), encoder_hidden_states=torch.randn(1, 77, 32))
    return sum(seen.values()), sum(norms.values())


def test_traced_flops_equal_the_flops_of_a_real_cpu_step(tiny_model_dir):
    """fp32, no checkpointing: the meta trace counts what FlopCounterMode counts on real CPU tensors,
    except attention, which FlopCounterMode has no formula for on the CPU (its CPU flash kernel)."""
    setup = _tiny_setup(precision="fp32")
    _, r = _predict(setup, with_phases=False)
    args = benchmark.parse_args(["--model", str(tiny_model_dir), "--device", "cpu", "--width", "32", "--height",
                                 "32", "--frames", "4", "--rank", str(RANK), "--threads", "1"])
    components = benchmark.build_components(args, torch.device("cpu"), torch.float32)
    latents = torch.zeros(1, 4, 4, 4, 4)
    bench = benchmark.TrainBench(args, components, latents, torch.device("cpu"))
    seed = next(s for s in range(100) if not benchmark.spatial_skipped(s))
    bench.embeddings()  # the prompt is encoded once, before the steps
    assert 0 < r["attention_flops_per_step"] < r["flops_per_step"]
    assert benchmark.count_train_flops(bench, [seed]) == r["flops_per_step"] - r["attention_flops_per_step"]


def _flops(fn) -> estimate.FlopCount:
    counter = estimate.FlopCount()
    with torch.device("meta"), counter:
        fn()
    return counter


def test_flops_of_a_linear_a_conv_and_attention_by_hand():
    """A multiply-add is 2 FLOPs: linear 2*batch*in*out; conv 2*N*C_out*H_out*W_out*C_in*k*k; attention
    two matmuls (QK^T and PV) of 2*B*heads*S_q*S_k*D each."""
    assert _flops(lambda: F.linear(torch.empty(3, 5), torch.empty(7, 5))).total == 2 * 3 * 5 * 7
    conv = _flops(lambda: F.conv2d(torch.empty(2, 3, 8, 8), torch.empty(4, 3, 3, 3), padding=1))
    assert conv.total == 2 * 2 * 4 * 8 * 8 * 3 * 3 * 3
    q = torch.empty(1, 2, 16, 8, device="meta", dtype=torch.float16)
    attention = _flops(lambda: cuda_emulation.cuda_attention(q, q, q))
    assert attention.total == attention.attention == 2 * (2 * 1 * 2 * 16 * 16 * 8)


def test_the_phase_tracer_on_a_hand_traced_module():
    """No grad, fp32, batch 10: weights 2 * 64 * 256 * 4 B; at the peak the input (10x64), the first
    linear's output (10x256) and GELU's output (10x256) are alive: the second linear's output
    (10x64) comes after the first output is released."""
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(64, 256, bias=False), torch.nn.GELU(),
                                    torch.nn.Linear(256, 64, bias=False)).requires_grad_(False)
    peak = estimate.trace_phase(lambda: model(torch.randn(10, 64, device="meta")), [model])
    assert peak["Parameter"] == 2 * 64 * 256 * 4
    assert peak["Activation"] == 4 * (10 * 64 + 10 * 256 + 10 * 256)
    assert peak["Total"] == peak["Parameter"] + peak["Activation"]


# CUDA autocast, from PyTorch's documentation (torch.amp, "CUDA Ops that can autocast to float16" and
# "... to float32"; ops in neither list run in their inputs' dtype), checked on concrete ops, and
# against this torch build's dispatcher: an op autocast casts has an AutocastCUDA kernel, the others
# a fallthrough. (CPU autocast differs: upsampling is on its float32 list, group/layer norm are not.)
_X16 = torch.empty(2, 32, 4, 4, device="meta", dtype=torch.float16)
_X32 = torch.empty(2, 32, 4, 4, device="meta")
AUTOCAST_CASES = [  # (op, aten name, call, dtype under fp16 autocast, on a documented list)
    ("conv2d", "aten::conv2d", lambda: F.conv2d(_X32, torch.empty(8, 32, 1, 1, device="meta")), torch.float16, True),
    ("linear", "aten::linear", lambda: F.linear(_X32, torch.empty(8, 4, device="meta")), torch.float16, True),
    ("bmm", "aten::bmm", lambda: torch.bmm(_X32[0], _X32[0]), torch.float16, True),
    ("baddbmm", "aten::baddbmm", lambda: torch.baddbmm(_X32[0], _X32[0], _X32[0]), torch.float16, True),
    ("group_norm", "aten::group_norm", lambda: F.group_norm(_X16, 8), torch.float32, True),
    ("layer_norm", "aten::layer_norm", lambda: F.layer_norm(_X16, (4,)), torch.float32, True),
    ("softmax", "aten::softmax.int", lambda: F.softmax(_X16, -1), torch.float32, True),
    ("exp", "aten::exp", lambda: torch.exp(_X16), torch.float32, True),
    ("mse_loss", "aten::mse_loss", lambda: F.mse_loss(_X16, _X16), torch.float32, True),
    ("upsample", "aten::upsample_nearest2d.vec", lambda: F.interpolate(_X16, scale_factor=2.0), torch.float16, False),
    ("silu", "aten::silu", lambda: F.silu(_X16), torch.float16, False),
    ("gelu", "aten::gelu", lambda: F.gelu(_X16), torch.float16, False),
    ("add", "aten::add.Tensor", lambda: _X16 + _X16, torch.float16, False),
]


@pytest.mark.parametrize("name, aten, call, expected, listed", AUTOCAST_CASES, ids=[c[0] for c in AUTOCAST_CASES])
def test_cuda_autocast_emulation_on_documented_ops(name, aten, call, expected, listed):
    emulation = cuda_emulation.CudaAutocast(torch.float16)
    with emulation, emulation.autocast():
        out = call()
    assert out.dtype == expected
    (entry,) = [line for line in torch._C._dispatch_dump_table(aten).splitlines() if line.startswith("AutocastCUDA")]
    assert ("fallthrough" not in entry) == listed, entry


def test_cuda_attention_is_flash_with_padded_heads_up_to_256():
    emulation = cuda_emulation.CudaAutocast(torch.float16)
    q = torch.empty(1, 2, 16, 5, device="meta")
    wide = torch.empty(1, 1, 16, 512, device="meta", dtype=torch.float16)
    with emulation, emulation.autocast(), estimate.FlopCount() as counter:
        attention = F.scaled_dot_product_attention(q, q, q)
        assert attention.dtype == torch.float16 and attention.shape == q.shape  # flash, head dim padded 5 -> 8
        F.scaled_dot_product_attention(wide, wide, wide)  # the VAE's 512-wide head: mem-efficient
    assert counter.attention == 2 * (2 * 1 * 2 * 16 * 16 * 8) + 2 * (2 * 1 * 1 * 16 * 16 * 512)


def test_cuda_dropout_saves_a_bool_mask():
    """ATen's dropout takes the fused native_dropout for CUDA inputs (Dropout.cpp), whose mask is bool."""
    emulation = cuda_emulation.CudaAutocast(torch.float16)
    x = torch.empty(8, 16, device="meta", dtype=torch.float16, requires_grad=True)
    with emulation:
        y = F.dropout(x, 0.1, True)
    assert y.grad_fn.name() == "NativeDropoutBackward0"
    assert [t.dtype for t in (y.grad_fn._saved_result1,)] == [torch.bool]


def test_checkpointing_lowers_the_predicted_activations():
    peaks = {}
    for kind in estimate.CHECKPOINTING:
        setup = _tiny_setup(checkpointing=kind, precision="fp32", width=64, height=64)
        peaks[kind] = _predict(setup, with_phases=False)[1]["step_peak_gb"]
    assert peaks["fine"] < peaks["block"] < peaks["off"]


def test_estimate_cli_ends_with_the_prediction_json(capsys):
    benchmark.main(["--estimate", "--arch", "tiny", "--width", "32", "--height", "32", "--frames", "4",
                    "--rank", "4", "--precision", "fp16", "--gradient-checkpointing"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["predicted_peak_gb"] > 0 and result["flops_per_step"] > 0
    assert result["checkpointing"] == ZEROSCOPE.default_granularity
    assert set(result["phases"]) == {"caching", "inversion", "training_step", "validation"}
    assert result["predicted_peak_gb"] == max(p["peak_gb"] for p in result["phases"].values())


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


@pytest.mark.parametrize("base, frames, precision", [("animatediff", 8, "fp16"), ("wan", 9, "bf16")])
def test_every_base_is_predicted_in_every_phase(base, frames, precision, tmp_path, capsys):
    """The predictor runs each base's real step, inversion and sampling call under CUDA's half
    precision (a float32 buffer or an untraceable scheduler op would stop it)."""
    from utils.tools.tiny_model import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / base, base=base)
    result = benchmark.main(["--estimate", "--model", str(folder), "--width", "64", "--height", "64", "--frames",
                             str(frames), "--rank", "4", "--precision", precision, "--gradient-checkpointing"])
    peaks = {name: phase["peak_gb"] for name, phase in result["phases"].items()}
    assert set(peaks) == {"caching", "inversion", "training_step", "validation"} and min(peaks.values()) > 0
    assert result["predicted_peak_gb"] == max(peaks.values()) and result["peak_phase"] == max(peaks, key=peaks.get)
    # the VAE is counted in the dtype the base loads it in (Wan: float32 whatever the precision)
    from models.bases import load_components

    loaded = load_components(str(folder), dtype=estimate.DTYPES[precision]).vae
    assert result["vae_gb"] * estimate.GB == sum(p.numel() * p.element_size() for p in loaded.parameters())
