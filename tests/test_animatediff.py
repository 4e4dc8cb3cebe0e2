"""The AnimateDiff base on a tiny AnimateDiffPipeline that stock diffusers assembles and saves:
LoRA placement, the single-frame rule, gradient isolation, the exports loaded by stock diffusers
and by AnimateDiff-Evolved's key rules, training, resume and inference end to end."""

import random
import re
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from diffusers import AnimateDiffPipeline, StableDiffusionPipeline, UNet2DConditionModel, UNetMotionModel
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

import MotionDirector_inference
import MotionDirector_train
from models.bases import get_base, load_components
from models.bases.animatediff import DIFFUSERS_EXPORT, MOTION_LORA_EXPORT, TINY_UNET
from models.checkpointing import enable_gradient_checkpointing
from models.lora import SPATIAL, TEMPORAL, adapter_parameters, add_adapter, lora_layers, spatial_adapter_names
from models.lora_io import adapter_state_dict, load_adapter, save_adapter
from utils.cli import run_cli
from utils.errors import UserError
from utils.io.video_io import video_info
from utils.training import step as ts

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "test_data" / "moving_square" / "moving_square.mp4"
BASE = get_base("animatediff")
MOTION_MODULES = 7  # one per down-block layer (2), two per up block (4), the mid block's (1)


@pytest.fixture(scope="module")
def tiny_ad(tmp_path_factory) -> Path:
    return BASE.build_tiny(tmp_path_factory.mktemp("animatediff") / "tiny_ad", seed=0)


@pytest.fixture(scope="module")
def stock_pipe(tiny_ad):
    return AnimateDiffPipeline.from_pretrained(str(tiny_ad))


def _inputs(frames: int, batch: int = 1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, frames, 8, 8, generator=generator), torch.tensor(321),
            torch.randn(batch, 77, 32, generator=generator))


def _stock_predict(unet, noisy, t, text):
    """What AnimateDiffPipeline does: one text state per frame."""
    with torch.no_grad():
        return unet(noisy, t, encoder_hidden_states=text.repeat_interleave(noisy.shape[2], 0)).sample


def _randomise(model, name, seed=1):
    """Non-zero LoRA weights (peft starts B at zero), so an adapter changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    for p in adapter_parameters(model, name):
        p.data = torch.randn(p.shape, generator=generator) * 0.05


def _close(a, b, rel):
    return (a - b).abs().max() <= rel * b.abs().max()


# ---------------------------------------------------------------- the base


def test_tiny_pipeline_is_a_stock_animatediff_pipeline(tiny_ad, stock_pipe):
    assert type(stock_pipe.unet) is UNetMotionModel and stock_pipe.motion_adapter is not None
    assert BASE.latent_shape(1, 16, 64, 64) == (1, 4, 16, 8, 8)
    with pytest.raises(UserError, match="at most 32"):
        BASE.check_frames(33, "--num-frames")


def test_lora_targets_temporal_only_in_motion_modules_spatial_in_none(tiny_ad):
    unet = load_components(str(tiny_ad)).denoiser
    add_adapter(unet, TEMPORAL, BASE.lora_targets(unet, TEMPORAL), rank=4)
    add_adapter(unet, SPATIAL, BASE.lora_targets(unet, SPATIAL), rank=4)
    placed = {TEMPORAL: [], SPATIAL: []}
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                placed[adapter].append(name)
    temporal, spatial = placed[TEMPORAL], placed[SPATIAL]
    assert len(temporal) == 10 * MOTION_MODULES and all(".motion_modules." in n for n in temporal)
    layers = {n.split(".transformer_blocks.0.")[1] for n in temporal}
    assert layers == {f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")} | {
        "ff.net.0.proj", "ff.net.2"}
    assert spatial and not any(".motion_modules." in n for n in spatial)
    assert all(".attentions." in n and (".attn1." in n or ".ff." in n) for n in spatial)  # no attn2, no proj_in/out


def test_single_frame_skips_motion_modules_and_more_frames_are_stock(tiny_ad, stock_pipe):
    ours = load_components(str(tiny_ad))
    noisy, t, text = _inputs(frames=3, batch=2)
    with torch.no_grad():
        many = ours.predict(noisy, t, text)
        one = ours.predict(noisy[:, :, :1], t, text)
    assert _close(many, _stock_predict(stock_pipe.unet, noisy, t, text), 1e-5)
    # One frame: the stock UNet2DConditionModel holding the same spatial weights (no motion modules).
    unet2d = UNet2DConditionModel(**TINY_UNET)
    result = unet2d.load_state_dict(stock_pipe.unet.state_dict(), strict=False)
    assert not result.missing_keys and all("motion_modules" in k for k in result.unexpected_keys)
    with torch.no_grad():
        image = unet2d(noisy[:, :, 0], t, encoder_hidden_states=text).sample
    assert _close(one[:, :, 0], image, 1e-5)
    # ... and the stock motion modules would have changed it.
    assert not _close(_stock_predict(stock_pipe.unet, noisy[:, :, :1], t, text)[:, :, 0], image, 1e-3)


def test_stable_diffusion_folder_needs_and_takes_a_motion_adapter(tiny_ad, stock_pipe, tmp_path):
    unet2d = UNet2DConditionModel(**TINY_UNET)
    unet2d.load_state_dict(stock_pipe.unet.state_dict(), strict=False)
    sd = tmp_path / "sd15"
    StableDiffusionPipeline(stock_pipe.vae, stock_pipe.text_encoder, stock_pipe.tokenizer, unet2d,
                            stock_pipe.scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(sd)
    with pytest.raises(UserError, match="needs motion_adapter_path") as err:
        load_components(str(sd))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="holds its own motion modules"):
        load_components(str(tiny_ad), options={"motion_adapter_path": str(tiny_ad / "motion_adapter")})
    joined = load_components(str(sd), options={"motion_adapter_path": str(tiny_ad / "motion_adapter")})
    noisy, t, text = _inputs(frames=3)
    with torch.no_grad():
        assert _close(joined.predict(noisy, t, text), _stock_predict(stock_pipe.unet, noisy, t, text), 1e-5)


def test_each_loss_reaches_only_its_own_adapter_with_or_without_checkpointing(tiny_ad):
    components = load_components(str(tiny_ad))
    unet = components.denoiser.train()
    spatial = spatial_adapter_names(2)
    for i, name in enumerate([TEMPORAL, *spatial]):
        add_adapter(unet, name, BASE.lora_targets(unet, SPATIAL if name != TEMPORAL else TEMPORAL), rank=4)
        _randomise(unet, name, seed=i)
    params = {n: adapter_parameters(unet, n) for n in [TEMPORAL, *spatial]}
    adapters = ts.Adapters(spatial, params, lora_layers(unet))
    latents, text = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 77, 32)

    def grads(settings):
        for p in (p for ps in params.values() for p in ps):
            p.grad = None
        random.seed(0)
        torch.manual_seed(0)
        ts.train_step(components, latents, text, adapters, "spatial_1", settings, backward=lambda loss: loss.backward(),
                      autocast=nullcontext)
        return {n: [None if p.grad is None else p.grad.clone() for p in ps] for n, ps in params.items()}

    def reached(g, name):
        return any(x is not None and x.abs().sum() > 0 for x in g[name])

    spatial_only = grads(ts.StepSettings(train_temporal=False))
    temporal_only = grads(ts.StepSettings(train_spatial=False))
    assert [n for n in params if reached(spatial_only, n)] == ["spatial_1"]
    assert [n for n in params if reached(temporal_only, n)] == [TEMPORAL]
    enable_gradient_checkpointing(unet, BASE.checkpoint_targets(unet, "fine"))
    for settings, plain in ((ts.StepSettings(train_temporal=False), spatial_only),
                            (ts.StepSettings(train_spatial=False), temporal_only)):
        checkpointed = grads(settings)
        for name in params:
            for a, b in zip(checkpointed[name], plain[name]):
                assert (a is None) == (b is None) and (a is None or _close(a, b, 1e-5))


# ---------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def exported(tiny_ad, tmp_path_factory):
    """A random temporal adapter saved natively and exported in both formats."""
    unet = load_components(str(tiny_ad)).denoiser
    add_adapter(unet, TEMPORAL, BASE.lora_targets(unet, TEMPORAL), rank=4)
    _randomise(unet, TEMPORAL)
    folder = tmp_path_factory.mktemp("export")
    native = save_adapter(unet, TEMPORAL, folder / "lora" / "7_unet.safetensors")
    files = BASE.export(adapter_state_dict(unet, TEMPORAL), TEMPORAL, folder / "export")
    assert [f.name for f in files] == [DIFFUSERS_EXPORT, MOTION_LORA_EXPORT]
    return native, folder / "export"


def test_diffusers_export_loads_in_stock_pipeline_to_the_native_adapters_outputs(tiny_ad, exported):
    native, export = exported
    ours = load_components(str(tiny_ad))
    load_adapter(ours.denoiser, native, TEMPORAL, BASE.lora_targets(ours.denoiser, TEMPORAL))
    pipe = AnimateDiffPipeline.from_pretrained(str(tiny_ad))
    before = _stock_predict(pipe.unet, *_inputs(frames=3))
    pipe.load_lora_weights(str(export))  # the file name diffusers looks for by default
    noisy, t, text = _inputs(frames=3)
    with torch.no_grad():
        expected = ours.predict(noisy, t, text)
    stock = _stock_predict(pipe.unet, noisy, t, text)
    assert not _close(stock, before, 1e-3)  # the LoRA changed the UNet
    assert _close(stock, expected, 1e-5)


def test_motion_lora_follows_animatediff_evolved_key_rules_with_the_same_deltas(exported):
    native, export = exported
    peft = load_file(native)
    motion = load_file(export / MOTION_LORA_EXPORT)
    down_keys = [k for k in motion if "up." not in k]  # ADE reads down keys and finds each up key
    assert len(motion) == 2 * len(down_keys) == len(peft) == 2 * 10 * MOTION_MODULES
    pattern = re.compile(r"^(down_blocks\.\d|up_blocks\.\d|mid_block)\.motion_modules\.\d\.temporal_transformer\."
                         r"transformer_blocks\.\d\.(attention_blocks\.[01]\.processor\.to_(q|k|v|out)_lora|"
                         r"ff\.net\.0\.proj_lora|ff\.net\.2_lora)\.down\.weight$")
    for key in down_keys:
        assert "temporal" in key and pattern.match(key), key
        up = motion[key.replace(".down.", ".up.")]
        # ADE's rules (model_injection.load_motion_lora_as_patches) give the original module's weight name ...
        original = key.replace("processor.", "").replace("_lora", "").replace("down.", "").replace("up.", "")
        if "to_out.0." not in original:
            original = original.replace("to_out.", "to_out.0.")
        # ... which diffusers' own converter maps onto UNetMotionModel's names.
        (name,) = convert_animatediff_checkpoint_to_diffusers({original: None})
        module = name.removesuffix(".weight")
        expected = peft[f"{module}.lora_B.weight"] @ peft[f"{module}.lora_A.weight"]
        assert torch.equal(up.float() @ motion[key].float(), expected)


# ---------------------------------------------------------------- training and inference end to end


def _overrides(model, out, **extra):
    values = {
        "pretrained_model_path": str(model), "motion_adapter_path": "null", "output_dir": str(out),
        "train_data.single_video_path": str(CLIP), "train_data.width": 64, "train_data.height": 64,
        "train_data.use_bucketing": False, "train_data.n_sample_frames": 4, "train_data.frame_step": 4,
        "validation_data.num_frames": 4, "validation_data.width": 64, "validation_data.height": 64,
        "validation_data.num_inference_steps": 2, "validation_data.noise_prior": 0.3,
        "validation_data.prompt": "[A ball is moving to the right.]", "lora_rank": 4,
        "max_train_steps": 2, "checkpointing_steps": 1, "validation_steps": 2, "mixed_precision": "no",
        "enable_xformers_memory_efficient_attention": False, "logger_type": "none", "seed": 3,
    }
    values.update(extra)
    return ["--config", str(REPO / "configs" / "config_animatediff_single_video.yaml"),
            *[f"{k}={v}" for k, v in values.items()]]


@pytest.fixture(scope="module")
def trained(tiny_ad, tmp_path_factory):
    out = tmp_path_factory.mktemp("ad_train")
    assert run_cli(MotionDirector_train.main, _overrides(tiny_ad, out)) == 0
    (run_dir,) = out.glob("train_*")
    return run_dir


def test_training_writes_adapters_exports_and_card(trained):
    for root in (trained / "checkpoint-1", trained / "checkpoint-2", trained):
        step = 1 if root.name == "checkpoint-1" else 2
        assert (root / "temporal" / "lora" / f"{step}_unet.safetensors").is_file()
        assert (root / "spatial" / "lora" / f"{step}_unet.safetensors").is_file()
        for name in (DIFFUSERS_EXPORT, MOTION_LORA_EXPORT):
            assert (root / "temporal" / "export" / name).is_file(), (root, name)
    assert (trained / "samples" / "2_A ball is moving to the right.mp4").is_file()
    card = (trained / "README.md").read_text()
    assert "- animatediff" in card and "load_lora_weights" in card and "animatediff_motion_lora" in card
    final = load_file(trained / "temporal" / "export" / DIFFUSERS_EXPORT)
    native = load_file(trained / "temporal" / "lora" / "2_unet.safetensors")
    assert final.keys() == {f"unet.{k}" for k in native} and all(torch.equal(final[f"unet.{k}"], v)
                                                                   for k, v in native.items())


def test_resume_continues_to_the_same_adapters(trained, tiny_ad, tmp_path):
    finals = {p: load_file(trained / p / "lora" / "2_unet.safetensors") for p in (SPATIAL, TEMPORAL)}
    argv = _overrides(tiny_ad, tmp_path, resume_from_checkpoint=str(trained / "checkpoint-1"),
                      **{"validation_data.sample_preview": False})
    assert run_cli(MotionDirector_train.main, argv) == 0
    for path, before in finals.items():
        after = load_file(trained / path / "lora" / "2_unet.safetensors")
        assert all(_close(after[k], v, 1e-5) for k, v in before.items())


def test_inference_with_the_noise_prior_writes_the_video(trained, tiny_ad, tmp_path, capsys):
    argv = ["--model", str(tiny_ad), "--checkpoint_folder", str(trained), "--noise_prior", "0.3",
            "--prompt", "A car is running on the road.", "-W", "64", "-H", "64", "-T", "4", "-s", "2",
            "--seed", "5", "-o", str(tmp_path), "--device", "cpu"]
    assert run_cli(MotionDirector_inference.main, argv) == 0
    video = tmp_path / "A_car_is_running_on_the_road_5.mp4"
    assert f"wrote {video}" in capsys.readouterr().out
    assert video_info(video).num_frames == 4


def test_full_size_architecture_is_stable_diffusion_1_5_plus_the_v2_adapter():
    with torch.device("meta"):
        unet = BASE.build_denoiser(BASE.architecture("animatediff")["denoiser"])
    spatial = sum(p.numel() for n, p in unet.named_parameters() if "motion_modules" not in n)
    assert spatial == 859_520_964  # Stable Diffusion 1.5's UNet
    assert unet.mid_block.motion_modules is not None and unet.config.motion_max_seq_length == 32


def test_demo_generates_with_an_animatediff_run_and_trains_from_its_config(trained, tiny_ad, tmp_path):
    import app

    path, status = app.generate(str(tiny_ad), str(trained), "A car.", "", 1, 0.3, 2, 64, 64, 4, 7.5, str(tmp_path))
    assert video_info(path).num_frames == 4 and str(trained) in status
    assert app.real_train_config(str(tiny_ad)) == REPO / "configs" / "config_animatediff_single_video.yaml"
