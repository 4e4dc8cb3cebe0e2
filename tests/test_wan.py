"""The Wan 2.1 base on a tiny random WanPipeline built by the stock diffusers pipeline: frames and
sizes, the VAE and text as the stock pipeline makes them, flow matching, the split training step,
the inversion against known answers, exports loaded by stock diffusers, and the CLIs end to end."""

import random
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from models.bases import Components, base_for_model, get_base, load_components
from models.bases.spec import SPATIAL, TEMPORAL
from models.bases.wan_parts import SCHEDULER_CONFIG, flow_scheduler_of
from models.lora import adapter_parameters, add_adapter, lora_layers
from models.lora_io import adapter_state_dict, load_adapter, save_adapter
from utils.errors import UserError
from utils.training import step as ts
from utils.training.dataset import to_pixel_values
from utils.tools.synthetic import make_moving_shape_video, moving_shape_frames

REPO = Path(__file__).resolve().parents[1]
WAN = get_base("wan")
PROMPT = "A car is running on the road."


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory) -> Path:
    return WAN.build_tiny(tmp_path_factory.mktemp("wan") / "tiny_wan", seed=0)


@pytest.fixture
def wan(wan_dir) -> Components:
    return load_components(str(wan_dir))


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    """(1, 9, 3, 64, 64) pixels of a square moving right."""
    return to_pixel_values(moving_shape_frames(9, 64), 64, 64)[None]


def _with_adapters(components, rank=4, seed=0):
    """Both paths on the transformer, up weights random so that every adapter changes the output."""
    torch.manual_seed(seed)
    for name in (TEMPORAL, SPATIAL):
        add_adapter(components.denoiser, name, components.lora_targets(name), rank)
        for p in adapter_parameters(components.denoiser, name):
            p.data = torch.randn_like(p) * 0.1
    params = {name: adapter_parameters(components.denoiser, name) for name in (TEMPORAL, SPATIAL)}
    return ts.Adapters([SPATIAL], params, lora_layers(components.denoiser), TEMPORAL)


# ----------------------------------------------------------------------------- the folder, frames, sizes


def test_tiny_folder_is_a_stock_wan_pipeline(wan_dir):
    pipe = WanPipeline.from_pretrained(str(wan_dir))
    video = pipe(PROMPT, num_frames=9, height=64, width=64, num_inference_steps=2, output_type="np").frames
    assert video.shape == (1, 9, 64, 64, 3)
    assert base_for_model(str(wan_dir)) is WAN


@pytest.mark.parametrize("frames, nearest", [(16, 17), (8, 9), (2, 1), (48, 49), (0, 1)])
def test_frame_counts_other_than_4k_plus_1_are_one_line_errors(frames, nearest):
    with pytest.raises(UserError, match=f"got {frames}; nearest valid: {nearest}$"):
        WAN.check_frames(frames, "--num-frames")


def test_sizes_must_be_multiples_of_16():
    with pytest.raises(UserError, match="nearest valid: 96x64$"):
        WAN.check_size(100, 72, "--width and --height")  # 72 is 8-aligned, not 16-aligned
    WAN.check_size(832, 480, "x")
    assert [WAN.latent_frames(f) for f in (1, 5, 9, 49, 81)] == [1, 2, 3, 13, 21]
    assert all(WAN.pixel_frames(WAN.latent_frames(f)) == f for f in (1, 5, 33, 49))
    assert WAN.latent_shape(2, 49, 480, 832) == (2, 16, 13, 60, 104)


def _with_vae(wan_dir, out: Path, **vae_config) -> Path:
    """A copy of the tiny folder with a fresh VAE of `vae_config` (over the tiny one's)."""
    import shutil

    from diffusers import AutoencoderKLWan

    from models.bases.wan_tiny import TINY_VAE

    shutil.copytree(wan_dir, out)
    shutil.rmtree(out / "vae")
    torch.manual_seed(2)
    AutoencoderKLWan(**dict(TINY_VAE, **vae_config)).save_pretrained(out / "vae")
    return out


def test_the_folders_vae_sets_the_time_compression_as_in_the_stock_pipeline(wan_dir, tmp_path):
    """A VAE halving time once (`scale_factor_temporal` 2): 9 frames are 5 latent frames for the base
    as for WanPipeline, encoding and decoding keep 9 frames; Wan 2.1's folders keep the shared base."""
    folder = _with_vae(wan_dir, tmp_path / "halving", temperal_downsample=[False, False, True], scale_factor_temporal=2)
    base = base_for_model(str(folder))
    assert base is not WAN and WAN.temporal_compression == 4 and base_for_model(str(wan_dir)) is WAN
    assert (base.latent_frames(9), base.pixel_frames(5), base.latent_shape(1, 9, 64, 64)) == (5, 9, (1, 16, 5, 8, 8))
    pipe = WanPipeline.from_pretrained(str(folder))
    stock = pipe(PROMPT, num_frames=9, height=64, width=64, num_inference_steps=1, output_type="latent").frames
    assert stock.shape == (1, 16, 5, 8, 8)
    components = load_components(str(folder))
    assert components.base.temporal_compression == 2
    latents = components.encode_video(to_pixel_values(moving_shape_frames(9, 64), 64, 64)[None])
    assert latents.shape == (1, 16, 5, 8, 8) and components.decode_video(latents).shape == (1, 9, 64, 64, 3)


def test_a_vae_config_at_odds_with_itself_is_a_one_line_error(wan_dir, tmp_path):
    folder = _with_vae(wan_dir, tmp_path / "odd", scale_factor_temporal=2)  # time still halved twice
    with pytest.raises(UserError, match="states scale_factor_temporal 2, which its temperal_downsample"):
        base_for_model(str(folder))


def test_training_refuses_a_bad_frame_count_before_loading(wan_dir, tmp_path, capsys):
    import MotionDirector_train
    from utils.cli import run_cli

    argv = ["--config", str(REPO / "configs" / "config_wan_single_video.yaml"), *_train_overrides(wan_dir, tmp_path),
            "train_data.n_sample_frames=8"]
    assert run_cli(MotionDirector_train.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert "must be 4k+1" in err and "nearest valid: 9" in err and "\n" not in err
    assert not list(tmp_path.glob("train_*"))


def test_text_encoder_is_never_moved_by_loading(wan_dir):
    components = load_components(str(wan_dir), device="meta")  # "meta": anything moved would show
    assert components.text_encoder.device.type == "cpu" and components.denoiser.device.type == "meta"


# ----------------------------------------------------------------------------- text and VAE against stock


def test_prompt_states_are_the_stock_pipelines(wan, wan_dir):
    pipe = WanPipeline.from_pretrained(str(wan_dir))
    stock, stock_negative = pipe.encode_prompt(PROMPT, "", max_sequence_length=512, device="cpu")
    ours = wan.encode_prompts([PROMPT, ""])
    assert ours.shape == (2, 512, 32)
    # one batch against two calls: float32 rounding (measured max 8e-7)
    torch.testing.assert_close(ours, torch.cat([stock, stock_negative]), rtol=1e-5, atol=1e-5)
    assert wan.extras["text_states"].keys() == {PROMPT, ""}  # each prompt encoded once


def test_single_frames_are_encoded_alone(wan, clip, monkeypatch):
    """Image latents of each frame, as the stock VAE encodes a one-frame video; the causal VAE
    encodes a clip's first frame alone, so the clip's first latent frame is that frame's."""
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)
    frames = wan.encode_frames(clip)
    video = wan.encode_video(clip)
    assert frames.shape == (1, 16, 9, 8, 8) and video.shape == (1, 16, 3, 8, 8)
    vae = wan.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    for i in (0, 4, 8):
        with torch.no_grad():
            alone = vae.encode(clip[:, i : i + 1].permute(0, 2, 1, 3, 4)).latent_dist.mean
        torch.testing.assert_close(frames[:, :, i : i + 1], (alone - mean) / std, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(video[:, :, 0], frames[:, :, 0], rtol=1e-5, atol=1e-6)


def test_decoding_matches_the_stock_pipeline(wan, wan_dir):
    pipe = WanPipeline.from_pretrained(str(wan_dir))
    kwargs = dict(prompt=PROMPT, num_frames=5, height=64, width=64, num_inference_steps=2)
    latents = pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    stock = pipe(**kwargs, output_type="np", generator=torch.Generator().manual_seed(0)).frames[0]
    ours = wan.decode_video(latents)[0].float()
    assert ours.shape == (5, 64, 64, 3)
    assert (ours - torch.from_numpy(stock) * 255).abs().max() <= 1.0  # uint8 rounding


# ----------------------------------------------------------------------------- flow matching


def test_training_noise_target_and_timesteps_by_hand(wan):
    scheduler = wan.scheduler
    x0, noise = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 16, 3, 4, 4)
    t = torch.tensor([250.0, 900.0])
    noisy = WAN.add_noise(scheduler, x0, noise, t)
    torch.testing.assert_close(noisy[1], 0.1 * x0[1] + 0.9 * noise[1])
    torch.testing.assert_close(WAN.target(scheduler, x0, noise, t), noise - x0)
    torch.manual_seed(3)
    drawn = WAN.draw_timesteps(scheduler, 20000, "cpu")
    torch.manual_seed(3)
    u = torch.sigmoid(torch.randn(20000))
    torch.testing.assert_close(drawn, 3 * u / (1 + 2 * u) * 1000)  # the folder's flow_shift 3
    # logit-normal u has median 1/2, shifted to 3 * 0.5 / 2 = 0.75
    assert 740 < drawn.median() < 760 and 0 < drawn.min() and drawn.max() < 1000


def test_sampling_runs_the_folders_scheduler_through_the_generic_loop(wan, wan_dir):
    """Our sampler (guidance batched) gives the stock pipeline's latents for the same noise."""
    pipe = WanPipeline.from_pretrained(str(wan_dir))
    noise = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    stock = pipe(PROMPT, num_frames=5, height=64, width=64, num_inference_steps=4, guidance_scale=5.0,
                 latents=noise.clone(), output_type="latent").frames
    cond, uncond = wan.encode_prompts([PROMPT, ""]).chunk(2)
    ours = WAN.sample(wan, noise.clone(), cond, uncond, 4, 5.0)
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)


class GaussianFlow(torch.nn.Module):
    """The exact velocity E[n - x0 | x_s] for data x0 ~ N(mu, std^2): its flow takes x0 to
    (x0 - mu) / std at s = 1."""

    dtype = torch.float32

    def __init__(self, mu, std):
        super().__init__()
        self.mu, self.std = mu, std

    def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
        s = (t / 1000).view(-1, 1, 1, 1, 1)
        a, var = 1 - s, (1 - s) ** 2 * self.std**2 + s**2
        return ((s - a * self.std**2) / var * (x - a * self.mu) - self.mu,)


class StraightFlow(torch.nn.Module):
    """The velocity of one straight path from x0 to `noise`: constant, so Euler steps are exact."""

    dtype = torch.float32

    def __init__(self, velocity):
        super().__init__()
        self.velocity = velocity

    def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
        return (self.velocity.expand_as(x),)


def _sample_back(components, inverted, num_steps, text):
    """Deterministic Euler from sigma = 1 with stock FlowMatchEuler on the inversion's schedule."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 0, num_steps + 1)[:-1].tolist())
    x = inverted
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(WAN.predict(components.denoiser, x, t, text), t, x).prev_sample
    return x


def test_inversion_of_a_straight_path_is_exact_both_ways():
    torch.manual_seed(0)
    x0, noise = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 16, 3, 4, 4)
    components = Components(WAN, None, None, None, StraightFlow(noise - x0), flow_scheduler_of(SCHEDULER_CONFIG))
    text = torch.zeros(1, 1, 1)
    inverted = WAN.invert(components, x0, text, 20)
    torch.testing.assert_close(inverted, noise, rtol=0, atol=1e-5)
    torch.testing.assert_close(_sample_back(components, inverted, 20, text), x0, rtol=0, atol=1e-5)


def test_inversion_converges_to_the_exact_gaussian_flow():
    """Euler is first order: the error against the exact answer halves as the steps double.
    Measured relative errors (mu 0.5, std 0.3, shift 3): 0.086 at 50 steps, 0.044 at 100, 0.022 at 200."""
    torch.manual_seed(0)
    mu, std = 0.5, 0.3
    x0 = mu + std * torch.randn(1, 16, 3, 4, 4)
    exact = (x0 - mu) / std
    components = Components(WAN, None, None, None, GaussianFlow(mu, std), flow_scheduler_of(SCHEDULER_CONFIG))
    errors = [((WAN.invert(components, x0, torch.zeros(1, 1, 1), n) - exact).norm() / exact.norm()).item()
              for n in (100, 200)]
    assert errors[1] < 0.025 and 0.45 < errors[1] / errors[0] < 0.55


def test_inverting_then_sampling_back_reconstructs_the_clip(wan, clip):
    """On the tiny model, relative error measured 0.022 at 50 steps and 0.011 at 100 (first order)."""
    wan.denoiser.eval()
    latents = wan.encode_video(clip)
    empty = wan.encode_prompts([""])
    errors = []
    for steps in (50, 100):
        back = _sample_back(wan, WAN.invert(wan, latents, empty, steps), steps, empty)
        errors.append(((back - latents).norm() / latents.norm()).item())
    assert errors[0] < 0.03 and 0.4 < errors[1] / errors[0] < 0.6


# ----------------------------------------------------------------------------- the split


def test_default_layers_and_a_configured_choice(wan_dir):
    components = load_components(str(wan_dir))
    assert components.lora_targets(TEMPORAL) == [f"blocks.{b}.attn1.{n}" for b in (0, 1)
                                                 for n in ("to_q", "to_k", "to_v", "to_out.0")]
    assert components.lora_targets(SPATIAL)[4:6] == ["blocks.0.ffn.net.0.proj", "blocks.0.ffn.net.2"]
    chosen = load_components(str(wan_dir), options={"lora_layers": {"temporal": ["attn1.to_q", "ffn"]}})
    assert chosen.lora_targets(TEMPORAL) == [f"blocks.{b}.{n}" for b in (0, 1)
                                             for n in ("attn1.to_q", "ffn.net.0.proj", "ffn.net.2")]
    assert chosen.lora_targets(SPATIAL) == components.lora_targets(SPATIAL)  # left out: the default


@pytest.mark.parametrize("option, message", [
    ({"temporal": ["attn3"]}, "lora_layers.temporal: attn3 is not a Wan block layer"),
    ({"spatial": []}, "lora_layers.spatial: an empty list"),
    ({"motion": ["attn1"]}, "lora_layers must map spatial and/or temporal"),
])
def test_bad_layer_choices_are_one_line_errors(wan_dir, option, message):
    with pytest.raises(UserError, match=message):
        base_for_model(str(wan_dir), {"lora_layers": option})


def test_a_wan_layer_name_on_zeroscope_and_a_motion_adapter_on_wan_are_refused(tiny_model_dir, wan_dir):
    with pytest.raises(UserError, match="lora_layers.temporal: ffn is not a ZeroScope temporal layer"):
        base_for_model(str(tiny_model_dir), {"lora_layers": {"temporal": ["ffn"]}})  # a Wan name
    with pytest.raises(UserError, match="motion_adapter_path does not apply to Wan"):
        base_for_model(str(wan_dir), {"motion_adapter_path": "guoyww/animatediff-motion-adapter-v1-5-3"})
    assert base_for_model(str(tiny_model_dir), {"lora_layers": None}).name == "zeroscope"  # null: not set


def _seed_without_skip():
    return next(s for s in range(100) if not (random.seed(s) or random.uniform(0, 1) < ts.SPATIAL_SKIP_PROB))


def _step(components, adapters, latents, frames, text, seed, settings=None):
    for params in adapters.params.values():
        for p in params:
            p.grad = None
    random.seed(seed)
    torch.manual_seed(seed)
    losses = ts.train_step(components, latents, text, adapters, SPATIAL, settings or ts.StepSettings(),
                           backward=lambda loss: loss.backward(), autocast=nullcontext, frame_latents=frames)
    return losses, {n: [p.grad.clone() if p.grad is not None else None for p in ps]
                    for n, ps in adapters.params.items()}


def test_spatial_step_sees_one_image_latent_and_temporal_the_clip(wan, clip, monkeypatch):
    adapters = _with_adapters(wan)
    latents, frames = wan.encode_video(clip), wan.encode_frames(clip)
    calls = []
    predict = WAN.predict
    monkeypatch.setattr(WAN, "draw_timesteps", lambda scheduler, batch, device: torch.zeros(batch))  # clean inputs
    monkeypatch.setattr(WAN, "predict", lambda *args: calls.append(args[1].clone()) or predict(*args))
    _step(wan, adapters, latents, frames, wan.encode_prompts([PROMPT]), _seed_without_skip())
    spatial_in, temporal_in = calls
    assert spatial_in.shape == (1, 16, 1, 8, 8) and temporal_in.shape == (1, 16, 3, 8, 8)
    # at sigma 0 the spatial input is one frame's own image latent, not a latent frame of the clip
    assert any(torch.equal(spatial_in[:, :, 0], frames[:, :, i]) for i in range(9))
    assert torch.equal(temporal_in, latents)


def test_each_loss_reaches_only_its_own_adapter(wan, clip):
    adapters = _with_adapters(wan)
    wan.denoiser.train()
    latents, frames, text = wan.encode_video(clip), wan.encode_frames(clip), wan.encode_prompts([PROMPT])
    seed = _seed_without_skip()
    _, spatial_only = _step(wan, adapters, latents, frames, text, seed, ts.StepSettings(train_temporal=False))
    losses, grads = _step(wan, adapters, latents, frames, text, seed)
    assert losses.spatial is not None and losses.temporal is not None
    assert all(g is None for g in spatial_only[TEMPORAL]) and all(g.abs().sum() > 0 for g in grads[TEMPORAL])
    # the temporal loss, taken with the spatial LoRA on, added nothing to the spatial gradient
    assert all(torch.equal(a, b) for a, b in zip(spatial_only[SPATIAL], grads[SPATIAL]))


def test_appearance_debiased_loss_across_latent_frames_by_hand():
    torch.manual_seed(0)
    pred, target = torch.randn(1, 16, 13, 2, 3), torch.randn(1, 16, 13, 2, 3)
    anchor, alpha = 5, 2**0.5
    by_hand = ((pred - target) ** 2).mean() + (
        (alpha * (pred - target) - (pred[:, :, anchor:anchor + 1] - target[:, :, anchor:anchor + 1])) ** 2).mean()
    torch.testing.assert_close(ts.temporal_loss(pred, target, anchor), by_hand)


# ----------------------------------------------------------------------------- exports


def test_exports_load_in_stock_wan_pipeline_to_the_native_transformer(wan, wan_dir, tmp_path):
    _with_adapters(wan)
    native = tmp_path / "temporal" / "lora" / "3_unet.safetensors"
    save_adapter(wan.denoiser, TEMPORAL, native)
    files = WAN.export(adapter_state_dict(wan.denoiser, TEMPORAL), TEMPORAL, tmp_path / "export")
    assert [f.name for f in files] == ["pytorch_lora_weights.safetensors", "comfyui_lora.safetensors"]

    ours = load_components(str(wan_dir))
    load_adapter(ours.denoiser, native.parent, TEMPORAL, ours.lora_targets(TEMPORAL, native))
    torch.manual_seed(1)
    x, t, text = torch.randn(1, 16, 3, 8, 8), torch.tensor([600.0]), torch.randn(1, 512, 32)
    with torch.no_grad():
        expected = ours.denoiser.eval()(x, t, text, return_dict=False)[0]
        plain = WanPipeline.from_pretrained(str(wan_dir)).transformer(x, t, text, return_dict=False)[0]
    assert (expected - plain).abs().max() > 1e-3  # the LoRA matters
    for file in files:
        pipe = WanPipeline.from_pretrained(str(wan_dir))
        pipe.load_lora_weights(str(file.parent), weight_name=file.name)
        with torch.no_grad():
            stock = pipe.transformer(x, t, text, return_dict=False)[0]
        torch.testing.assert_close(stock, expected, rtol=1e-5, atol=1e-6)


def test_inference_loads_a_lora_of_non_default_layers_from_its_file(wan_dir, tmp_path):
    from utils.inference.generate import LoraRequest, prepare_model

    trained = load_components(str(wan_dir), options={"lora_layers": {"temporal": ["attn1", "ffn"]}})
    add_adapter(trained.denoiser, TEMPORAL, trained.lora_targets(TEMPORAL), 4)
    save_adapter(trained.denoiser, TEMPORAL, tmp_path / "lora" / "1_unet.safetensors")
    loaded = prepare_model(str(wan_dir), [LoraRequest(tmp_path / "lora", TEMPORAL)], "cpu", torch.float32)
    assert sorted(adapter_state_dict(loaded.denoiser, TEMPORAL)) == sorted(
        adapter_state_dict(trained.denoiser, TEMPORAL))


# ----------------------------------------------------------------------------- training and inference


def _train_overrides(wan_dir, out_dir, **extra):
    values = {
        "pretrained_model_path": str(wan_dir), "output_dir": str(out_dir),
        "train_data.single_video_path": str(out_dir.parent / "clip9.mp4"),
        "train_data.width": 64, "train_data.height": 64, "train_data.n_sample_frames": 9,
        "validation_data.width": 64, "validation_data.height": 64, "validation_data.num_frames": 9,
        "validation_data.num_inference_steps": 2, "validation_data.noise_prior": 0.3,
        "max_train_steps": 2, "checkpointing_steps": 1, "validation_steps": 2,
        "mixed_precision": "no", "gradient_checkpointing": "false", "lora_rank": 4, "logger_type": "none", "seed": 0,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def wan_run(wan_dir, tmp_path_factory) -> Path:
    """The issue's "Done when": the training CLI with the Wan config on a 9-frame 64x64 clip."""
    import MotionDirector_train
    from utils.cli import run_cli

    out = tmp_path_factory.mktemp("wan_train") / "out"
    make_moving_shape_video(out.parent / "clip9.mp4", frames=9, size=64, fps=16)
    argv = ["--config", str(REPO / "configs" / "config_wan_single_video.yaml"),
            *_train_overrides(wan_dir, out, **{"gradient_checkpointing": "true"})]
    assert run_cli(MotionDirector_train.main, argv) == 0
    (run,) = out.glob("train_*")
    return run


def test_wan_run_writes_adapters_exports_cache_and_card(wan_run):
    for rel in ("checkpoint-1/temporal/lora/1_unet.safetensors", "spatial/lora/2_unet.safetensors",
                "temporal/lora/2_unet.safetensors", "temporal/export/pytorch_lora_weights.safetensors",
                "temporal/export/comfyui_lora.safetensors", "checkpoint-2/temporal/export/comfyui_lora.safetensors",
                "samples/2_A ball is moving to the right on the grass.mp4"):
        assert (wan_run / rel).is_file(), rel
    cached = torch.load(wan_run / "cached_latents" / "cached_0.pt", weights_only=False)
    assert cached["latents"].shape == (16, 3, 8, 8) and cached["frame_latents"].shape == (16, 9, 8, 8)
    assert cached["inversion_noise"].shape == (16, 3, 8, 8)
    card = (wan_run / "README.md").read_text()
    assert "- wan" in card and "pipe.load_lora_weights" in card and "comfyui_lora.safetensors" in card


def test_inference_cli_writes_the_video_with_the_noise_prior(wan_dir, wan_run, tmp_path, capsys):
    import MotionDirector_inference
    from utils.cli import run_cli
    from utils.io.video_io import video_info

    argv = ["--model", str(wan_dir), "--checkpoint_folder", str(wan_run), "--num-frames", "9", "--noise_prior", "0.3",
            "-p", PROMPT, "--seed", "4", "-o", str(tmp_path)]  # sizes and steps: the tiny model's defaults
    assert run_cli(MotionDirector_inference.main, argv) == 0
    video = tmp_path / "A_car_is_running_on_the_road_4.mp4"
    assert capsys.readouterr().out.strip() == f"wrote {video}"
    info = video_info(video)
    assert (info.num_frames, info.width, info.height, info.fps) == (9, 64, 64, 16)  # Wan's 16 fps


def test_noise_prior_starts_from_the_mix_of_inversion_and_noise(wan_dir, wan_run, tmp_path, monkeypatch):
    from utils.inference import generate

    started = []
    monkeypatch.setattr(WAN, "sample", lambda c, latents, *args, **kwargs: started.append(latents) or latents)
    settings = generate.GenerationSettings(PROMPT, output_dir=str(tmp_path), width=64, height=64, num_frames=9,
                                           num_steps=2, seed=11, noise_prior=0.3)
    generate.run_generation(str(wan_dir), [], settings, wan_run / "cached_latents", "fix it")
    inverted = torch.load(wan_run / "cached_latents" / "cached_0.pt", weights_only=False)["inversion_noise"]
    noise = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(started[0], 0.3**0.5 * inverted[None] + 0.7**0.5 * noise)


def test_resumed_run_ends_with_the_same_adapters(wan_dir, tmp_path):
    from safetensors.torch import load_file

    from utils.training.config import load_config
    from utils.training.trainer import run

    make_moving_shape_video(tmp_path / "clip9.mp4", frames=9, size=64, fps=16)
    config = str(REPO / "configs" / "config_wan_single_video.yaml")
    quick = {"validation_data.sample_preview": "false", "validation_data.noise_prior": 0}

    def train(out, **extra):
        return run(load_config(config, _train_overrides(wan_dir, tmp_path / out, **quick, **extra)))

    full = train("full", max_train_steps=3)
    half = train("half", max_train_steps=2)
    resumed = train("half", max_train_steps=3, resume_from_checkpoint=str(half / "checkpoint-2"))
    assert resumed == half
    for path in (SPATIAL, TEMPORAL):
        a = load_file(full / path / "lora" / "3_unet.safetensors")
        b = load_file(resumed / path / "lora" / "3_unet.safetensors")
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_web_demo_trains_and_generates_with_a_wan_model(wan_dir, tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed")
    import app

    assert app.form_defaults(str(wan_dir))["num_frames"] == 9 and app.default_size(str(wan_dir)) == 64
    app.build_demo(str(wan_dir), str(tmp_path))  # the page builds with the Wan defaults
    clip = make_moving_shape_video(tmp_path / "clip.mp4", frames=9, size=64, fps=16)
    run_dir, status = app.train(str(wan_dir), str(clip), "A square is moving to the right.", 1, 64, 64, 9,
                                output_dir=str(tmp_path))
    assert (Path(run_dir) / "temporal" / "export" / "pytorch_lora_weights.safetensors").is_file()
    path, status = app.generate(str(wan_dir), run_dir, PROMPT, "", 5, 0.3, 2, 64, 64, 9, 5.0, output_dir=str(tmp_path))
    assert Path(path).is_file() and "seed 5" in status
    with pytest.raises(UserError, match="nearest valid: 9"):
        app.generate(str(wan_dir), "", PROMPT, "", 5, 0.0, 2, 64, 64, 8, 5.0, output_dir=str(tmp_path))


def test_web_demo_trains_a_real_wan_model_from_the_wan_config(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed")
    import json

    import app

    real = tmp_path / "wan"  # only the configs decide: a 1536-wide transformer is a real Wan
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (real / sub).mkdir(parents=True)
    (real / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    (real / "transformer" / "config.json").write_text(json.dumps({"num_attention_heads": 12, "attention_head_dim": 128}))
    assert app.training_settings(str(real), "cuda") == (str(REPO / "configs" / "config_wan_single_video.yaml"), {})
    assert app.form_defaults(str(real)) == WAN.default_sampling
