"""Training options as the original ran them, and the parts that matter on a real GPU:
LR schedulers, validation scales, lora_path, float32 resume under bf16, gradient averaging across
processes, gradient clipping, chunked VAE encoding, float32 inversion, the rescaled schedule."""

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from models.lora import SPATIAL, TEMPORAL, add_adapter, adapter_parameters, lora_layers
from models.lora_io import save_adapter
from models.bases import load_components
from models.bases.zeroscope import load_unet
from utils.training.checkpoints import STATE_FILE
from utils.training.config import load_config
from utils.errors import UserError
from utils.tools.synthetic import make_moving_shape_video
from utils.training import trainer
from helpers import ZEROSCOPE, ddim_inversion, lora_targets

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "config_tiny_cpu.yaml"
CLIP = REPO / "test_data" / "moving_square" / "moving_square.mp4"


def _config(model_dir, out_dir, **extra):
    values = {
        "pretrained_model_path": model_dir, "output_dir": out_dir,
        "train_data.single_video_path": CLIP, "train_data.n_sample_frames": 4, "train_data.frame_step": 4,
        "validation_data.noise_prior": 0.0, "validation_data.sample_preview": False,
        "max_train_steps": 4, "checkpointing_steps": 2, "validation_steps": 4,
    }
    values.update(extra)
    return load_config(str(CONFIG), [f"{k}={v}" for k, v in values.items()])


def _two_clips(folder: Path) -> Path:
    make_moving_shape_video(folder / "red_square.mp4", frames=4, size=64, fps=8, shape="square")
    make_moving_shape_video(folder / "blue_circle.mp4", frames=4, size=64, fps=8, shape="circle",
                            color=(0.1, 0.3, 0.9), hue=0.3)
    return folder


def _two_clip_settings(tmp_path):
    return {"dataset_types": "[folder]", "train_data.path": _two_clips(tmp_path / "clips"),
            "train_data.fallback_prompt": "'A shape moves.'", "single_spatial_lora": False}


# ----------------------------------------------------------------------------- LR schedulers

def test_lr_schedulers_step_as_the_original(tiny_model_dir, tmp_path):
    """Each step advances the temporal scheduler and the drawn clip's spatial one (also when its
    spatial loss was skipped): with two clips drawn twice each in 4 steps, each spatial schedule
    is at step 2 and the temporal one at 4. Linear decay over 4 steps: lr * (1 - k/4)."""
    run_dir = trainer.run(_config(tiny_model_dir, tmp_path / "out", lr_scheduler="linear", checkpointing_steps=4,
                                  **_two_clip_settings(tmp_path)))
    schedulers = torch.load(run_dir / "checkpoint-4" / STATE_FILE, weights_only=False)["optimisers"]["schedulers"]
    assert {name: s["last_epoch"] for name, s in schedulers.items()} == {TEMPORAL: 4, "spatial_0": 2, "spatial_1": 2}
    assert schedulers["spatial_0"]["_last_lr"][0] == pytest.approx(5e-4 * (1 - 2 / 4))
    assert schedulers[TEMPORAL]["_last_lr"][0] == pytest.approx(0.0)


# ----------------------------------------------------------------------------- validation

def test_validation_spatial_scale_applies_to_every_spatial_lora(tiny_model_dir, tmp_path, monkeypatch):
    import utils.training.validation as validation
    from utils.training.step import Adapters

    components = load_components(str(tiny_model_dir))
    unet = components.denoiser
    names = ["spatial_0", "spatial_1"]
    for name in [*names, TEMPORAL]:
        add_adapter(unet, name, lora_targets(unet, name), 4)
    adapters = Adapters(names, {n: adapter_parameters(unet, n) for n in [*names, TEMPORAL]}, lora_layers(unet))
    seen = {}

    spatial_layer = next(layer for layer in lora_layers(unet) if "spatial_0" in layer.scaling)

    def record(components, settings, seed, inverted):
        layer = spatial_layer
        seen["active"] = sorted(layer.active_adapters)
        seen["scales"] = {n: layer.scaling[n] for n in names if n in layer.scaling}
        return torch.zeros(1, 4, 8, 8, 3, dtype=torch.uint8)

    monkeypatch.setattr(validation, "sample_video", record)
    monkeypatch.setattr(validation, "write_video", lambda path, video, fps: path)
    cfg = _config(tiny_model_dir, tmp_path, **{"validation_data.spatial_scale": 0.5})
    accelerator = SimpleNamespace(autocast=lambda: torch.autocast("cpu", enabled=False))
    validation.log_validation(cfg, components, adapters, {"prompt": "p"}, tmp_path, 1, accelerator)
    assert seen["active"] == sorted([*names, TEMPORAL])
    assert seen["scales"] == {n: pytest.approx(0.5) for n in names}  # lora_alpha = r: scaling = scale
    assert all(spatial_layer.scaling[n] == pytest.approx(1.0) for n in names)  # restored


# ----------------------------------------------------------------------------- lora_path

def test_lora_path_without_adapters_is_an_error(tiny_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = _config(tiny_model_dir, tmp_path / "out", lora_path=tmp_path / "empty", train_temporal_lora=False)
    with pytest.raises(UserError, match="lora_path: .*spatial/lora not found"):
        trainer.add_adapters(cfg, load_components(str(tiny_model_dir)), 1, None)


def test_every_spatial_lora_starts_from_lora_path(tiny_model_dir, tmp_path):
    unet = load_unet(str(tiny_model_dir))
    for name, seed in ((SPATIAL, 1), (TEMPORAL, 2)):
        add_adapter(unet, name, lora_targets(unet, name), 4)
        generator = torch.Generator().manual_seed(seed)
        for p in adapter_parameters(unet, name):
            p.data = torch.randn(p.shape, generator=generator)
        save_adapter(unet, name, tmp_path / "prev" / name / "lora" / "5_unet.safetensors")
    saved = load_file(tmp_path / "prev" / SPATIAL / "lora" / "5_unet.safetensors")
    cfg = _config(tiny_model_dir, tmp_path / "out", lora_path=tmp_path / "prev", single_spatial_lora=False)
    fresh = load_components(str(tiny_model_dir))
    adapters = trainer.add_adapters(cfg, fresh, 2, None)
    assert adapters.spatial == ["spatial_0", "spatial_1"]
    for name in adapters.spatial:
        loaded = {n: p for n, p in fresh.denoiser.named_parameters() if n.endswith(f".{name}.weight")}
        assert len(loaded) == len(saved)
        for key, value in saved.items():
            assert torch.equal(loaded[key.replace(".weight", f".{name}.weight")], value)


# ----------------------------------------------------------------------------- bf16 resume

@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process: reset it around a bf16 run."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_resume_equals_an_uninterrupted_run(tiny_model_dir, tmp_path, fresh_accelerate_state):
    """Adapters resume in float32 (not through the bf16 UNet): 2 + 2 steps = 4 steps."""
    full = trainer.run(_config(tiny_model_dir, tmp_path / "full", mixed_precision="bf16"))
    half = trainer.run(_config(tiny_model_dir, tmp_path / "half", mixed_precision="bf16", max_train_steps=2))
    trainer.run(_config(tiny_model_dir, tmp_path / "half", mixed_precision="bf16",
                        resume_from_checkpoint=half / "checkpoint-2"))
    for path in (SPATIAL, TEMPORAL):
        a = load_file(full / path / "lora" / "4_unet.safetensors")
        b = load_file(half / path / "lora" / "4_unet.safetensors")
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


# ----------------------------------------------------------------------------- several processes

def test_gradients_are_averaged_over_the_processes_that_used_them():
    """This process trained adapter a (gradient g), the other process trained b (gradient h) and
    both trained c: a keeps g, b gets h, c gets the mean, and d (nobody) keeps no gradient."""
    g, h, c_mine, c_peer = (torch.full((2, 3), v) for v in (2.0, 4.0, 1.0, 3.0))
    params = {name: [torch.nn.Parameter(torch.zeros(2, 3))] for name in "abcd"}
    params["a"][0].grad, params["c"][0].grad = g.clone(), c_mine.clone()
    peer = [torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.zeros(6), h.flatten(), c_peer.flatten()]
    calls = iter(peer)
    trainer.average_gradients(params, lambda t: t + next(calls), "cpu")
    assert torch.equal(params["a"][0].grad, g)
    assert torch.equal(params["b"][0].grad, h)
    assert torch.equal(params["c"][0].grad, torch.full((2, 3), 2.0))
    assert params["d"][0].grad is None


def test_each_process_draws_from_its_own_seed(monkeypatch):
    seeds = []
    monkeypatch.setattr(trainer, "set_seed", seeds.append)
    cfg = SimpleNamespace(seed=10)
    for rank in range(2):
        trainer._seed_per_process(cfg, SimpleNamespace(num_processes=2, process_index=rank))
    trainer._seed_per_process(cfg, SimpleNamespace(num_processes=1, process_index=0))
    assert seeds == [10, 11]  # one process keeps the run's seed stream untouched


# ----------------------------------------------------------------------------- clipping, batch size

class _SpyOptimizer:
    def __init__(self, params):
        self.params, self.norms = params, []

    def step(self):
        self.norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params])).item())

    def zero_grad(self, set_to_none=True):
        pass


def test_max_grad_norm_clips_each_path_before_its_step():
    params = {"a": [torch.nn.Parameter(torch.zeros(4))], "b": [torch.nn.Parameter(torch.zeros(4))]}
    params["a"][0].grad = torch.full((4,), 3.0)  # norm 6
    params["b"][0].grad = torch.full((4,), 0.1)  # norm 0.2
    spies = {n: _SpyOptimizer(p) for n, p in params.items()}
    trainer.Optimisers(spies, {}).step(["a", "b"], [], params, max_grad_norm=1.0)
    assert spies["a"].norms == [pytest.approx(1.0, rel=1e-5)]
    assert spies["b"].norms == [pytest.approx(0.2, rel=1e-5)]  # under the limit: untouched


def test_validation_with_a_noise_prior_samples_at_the_cached_size(tiny_model_dir, tmp_path):
    """As the original: a noise prior's sample keeps the cached clip's latent size and frame count
    (trained at 32x32x4 here; validation_data asks for 64x64x8)."""
    from utils.io.video_io import video_info

    run_dir = trainer.run(_config(tiny_model_dir, tmp_path / "out", max_train_steps=1, checkpointing_steps=1,
                                  validation_steps=1, **{"train_data.width": 32, "train_data.height": 32,
                                                         "validation_data.noise_prior": 0.5,
                                                         "validation_data.sample_preview": True,
                                                         "validation_data.num_inference_steps": 2,
                                                         "validation_data.width": 64, "validation_data.height": 64,
                                                         "validation_data.num_frames": 8}))
    (sample,) = (run_dir / "samples").glob("1_*.mp4")
    info = video_info(sample)
    assert (info.width, info.height, info.num_frames) == (32, 32, 4)


def test_batch_size_above_one_warns(tiny_model_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="utils.training.trainer"):
        trainer.run(_config(tiny_model_dir, tmp_path, train_batch_size=2, max_train_steps=1, max_grad_norm=1.0))
    assert "each step trains on one clip" in caplog.text


# ----------------------------------------------------------------------------- memory at real sizes

def test_vae_encodes_in_chunks_with_the_same_draw(tiny_model_dir, monkeypatch):
    from models.bases import unet_base

    components = load_components(str(tiny_model_dir))
    pixels = torch.rand(1, 10, 3, 64, 64) * 2 - 1
    monkeypatch.setattr(unet_base, "FRAMES_PER_VAE_CHUNK", 10)
    torch.manual_seed(0)
    whole = components.encode_video(pixels)
    monkeypatch.setattr(unet_base, "FRAMES_PER_VAE_CHUNK", 3)
    torch.manual_seed(0)
    chunked = components.encode_video(pixels)
    assert chunked.shape == (1, 4, 10, 8, 8)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_inversion_keeps_float32_latents_under_a_half_precision_unet():
    from diffusers import DDIMScheduler

    class HalfUNet(torch.nn.Module):
        dtype = torch.bfloat16

        def __init__(self, eps):
            super().__init__()
            self.eps, self.inputs = eps, []

        def forward(self, sample, t, encoder_hidden_states):
            self.inputs.append(sample.dtype)
            return SimpleNamespace(sample=self.eps.to(torch.bfloat16))

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    x = torch.randn(1, 4, 2, 4, 4)
    eps = torch.randn_like(x).to(torch.bfloat16).float()  # exactly representable in bf16
    unet = HalfUNet(eps)
    out = ddim_inversion(unet, scheduler, x, torch.zeros(1, 77, 8), num_steps=4)
    assert out.dtype == torch.float32 and set(unet.inputs) == {torch.bfloat16}
    alphas, expected = scheduler.alphas_cumprod, x
    for t in (1, 251, 501, 751):
        a = alphas[t - 250] if t - 250 >= 0 else alphas[0]
        expected = alphas[t] ** 0.5 * (expected - (1 - a) ** 0.5 * eps) / a**0.5 + (1 - alphas[t]) ** 0.5 * eps
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)  # float32 all the way


def test_rescaled_schedule_reaches_every_copy_of_the_scheduler(tiny_model_dir):
    """Zero terminal SNR by hand (Lin et al. 2023, Algorithm 1), also in a copy built from the config
    (what the sampler and the inversion do)."""
    from diffusers import DDIMScheduler

    base = load_components(str(tiny_model_dir)).scheduler
    sqrt_bar = base.alphas_cumprod.sqrt()
    expected = ((sqrt_bar - sqrt_bar[-1]) * sqrt_bar[0] / (sqrt_bar[0] - sqrt_bar[-1])) ** 2
    copy = DDIMScheduler.from_config(ZEROSCOPE.training_scheduler(base, rescale_schedule=True).config)
    torch.testing.assert_close(copy.alphas_cumprod, expected, rtol=1e-5, atol=1e-6)
    assert copy.alphas_cumprod[-1] == 0


# ----------------------------------------------------------------------------- ablation switches

def test_coupled_tuning_trains_the_temporal_lora_alone(tiny_model_dir, tmp_path):
    """train_spatial_lora=false: no spatial adapter exists or is saved, every step has a temporal
    loss and none a spatial one, and the temporal LoRA moves."""
    run_dir = trainer.run(_config(tiny_model_dir, tmp_path / "out", train_spatial_lora=False, checkpointing_steps=4))
    assert not (run_dir / "spatial").exists() and not (run_dir / "checkpoint-4" / "spatial").exists()
    temporal = load_file(run_dir / "temporal" / "lora" / "4_unet.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in temporal.items())
    schedulers = torch.load(run_dir / "checkpoint-4" / STATE_FILE, weights_only=False)["optimisers"]["schedulers"]
    assert list(schedulers) == [TEMPORAL] and schedulers[TEMPORAL]["last_epoch"] == 4


def test_nothing_to_train_is_a_config_error(tiny_model_dir, tmp_path):
    from utils.training.config import validate_config

    with pytest.raises(UserError, match="train_spatial_lora"):
        validate_config(_config(tiny_model_dir, tmp_path / "out", train_spatial_lora=False, train_temporal_lora=False))


def test_temporal_loss_without_the_debiased_term_is_the_plain_mse():
    from utils.training.step import temporal_loss

    torch.manual_seed(0)
    pred, target = torch.randn(1, 4, 3, 2, 2), torch.randn(1, 4, 3, 2, 2)
    mse = ((pred - target) ** 2).mean()
    # debiased term by hand: alpha = sqrt(2), beta = 1, anchor frame 1
    d = 2**0.5 * (pred - target) - (pred - target)[:, :, 1:2]
    assert temporal_loss(pred, target, 1, debias=False).item() == pytest.approx(mse.item(), abs=1e-7)
    assert temporal_loss(pred, target, 1).item() == pytest.approx((mse + (d**2).mean()).item(), abs=1e-6)


def test_debias_switch_reaches_the_training_step(tiny_model_dir, tmp_path, monkeypatch):
    from utils.training import step as ts

    seen = []
    real = ts.temporal_loss
    monkeypatch.setattr(ts, "temporal_loss", lambda *a: seen.append(a[3]) or real(*a))
    trainer.run(_config(tiny_model_dir, tmp_path / "a", max_train_steps=2, appearance_debiased_loss=False))
    trainer.run(_config(tiny_model_dir, tmp_path / "b", max_train_steps=2))
    assert seen == [False, False, True, True]
