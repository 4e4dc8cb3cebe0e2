"""ZeroScope's `lora_layers`: the temporal LoRA on the temporal convs too, trained, saved and loaded."""

from pathlib import Path

import pytest
import torch
from diffusers.models.resnet import TemporalConvLayer
from safetensors.torch import load_file

from models.bases import base_for_model, load_components
from models.lora import SPATIAL, TEMPORAL, add_adapter, lora_layers
from models.lora_io import adapter_state_dict, read_lora_config, save_adapter
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "test_data" / "moving_square" / "moving_square.mp4"
WITH_CONVS = {"temporal": ["attn1", "attn2", "ff", "temp_convs"]}


def test_temp_convs_add_every_conv3d_of_the_temporal_convs_in_registration_order(tiny_model_dir):
    default = load_components(str(tiny_model_dir))
    chosen = load_components(str(tiny_model_dir), options={"lora_layers": WITH_CONVS})
    unet = chosen.denoiser
    conv_blocks = [m for m in unet.modules() if isinstance(m, TemporalConvLayer)]
    added = [n for n in chosen.lora_targets(TEMPORAL) if n not in default.lora_targets(TEMPORAL)]
    modules = dict(unet.named_modules())
    assert len(added) == 4 * len(conv_blocks) == 32  # conv1..conv4 in each of the 8 temporal conv blocks
    assert all(isinstance(modules[n], torch.nn.Conv3d) and modules[n].kernel_size == (3, 1, 1) for n in added)
    order = [name for name, _ in unet.named_modules()]
    assert chosen.lora_targets(TEMPORAL) == sorted(chosen.lora_targets(TEMPORAL), key=order.index)
    # the original's layers keep their order among them: released .pt lists still map one to one
    assert [n for n in chosen.lora_targets(TEMPORAL) if n not in added] == default.lora_targets(TEMPORAL)
    assert chosen.lora_targets(SPATIAL) == default.lora_targets(SPATIAL)
    only_convs = load_components(str(tiny_model_dir), options={"lora_layers": {"temporal": ["temp_convs"]}})
    assert only_convs.lora_targets(TEMPORAL) == added


@pytest.mark.parametrize("option, message", [
    ({"spatial": ["attn1", "temp_convs"]}, "lora_layers.spatial: temp_convs is not a ZeroScope spatial layer; "
                                           r"use attn1, attn2, ff \(the spatial path sees single frames"),
    ({"temporal": ["ffn"]}, "lora_layers.temporal: ffn is not a ZeroScope temporal layer; use attn1, attn2, ff, temp_convs"),
    ({"temporal": []}, "lora_layers.temporal: an empty list"),
])
def test_bad_zeroscope_layer_choices_are_one_line_errors(tiny_model_dir, option, message):
    with pytest.raises(UserError, match=message):
        base_for_model(str(tiny_model_dir), {"lora_layers": option})


def _prediction(components, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        return components.predict(x, torch.tensor([500]), text)


def test_a_conv_lora_saves_and_loads_with_the_same_output(tiny_model_dir, tmp_path):
    from utils.inference.generate import LoraRequest, prepare_model

    trained = load_components(str(tiny_model_dir), options={"lora_layers": WITH_CONVS})
    torch.manual_seed(0)
    add_adapter(trained.denoiser, TEMPORAL, trained.lora_targets(TEMPORAL), 4)
    for layer in lora_layers(trained.denoiser):  # up weights start at zero: give the LoRA a term
        torch.nn.init.normal_(layer.lora_B[TEMPORAL].weight, std=0.2)
    file = save_adapter(trained.denoiser, TEMPORAL, tmp_path / "lora" / "7_unet.safetensors")
    state = load_file(str(file))
    conv_name = next(n for n in trained.lora_targets(TEMPORAL) if ".temp_convs." in n)
    assert state[f"{conv_name}.lora_A.weight"].shape == (4, 32, 3, 1, 1)
    assert state[f"{conv_name}.lora_B.weight"].shape == (32, 4, 1, 1, 1)
    assert read_lora_config(file)["target_modules"] == sorted(trained.lora_targets(TEMPORAL))

    # inference knows nothing of the config: the file says which layers it holds
    loaded = prepare_model(str(tiny_model_dir), [LoraRequest(tmp_path / "lora", TEMPORAL)], "cpu", torch.float32)
    assert sorted(adapter_state_dict(loaded.denoiser, TEMPORAL)) == sorted(state)
    expected = _prediction(trained)
    plain = _prediction(load_components(str(tiny_model_dir)))
    assert (expected - plain).abs().max() > 1e-3  # the LoRA matters
    torch.testing.assert_close(_prediction(loaded), expected, rtol=1e-5, atol=1e-6)


def test_a_conv_lora_file_on_a_model_without_those_layers_is_a_one_line_error(tiny_model_dir, tmp_path):
    from models.lora_io import load_adapter

    trained = load_components(str(tiny_model_dir), options={"lora_layers": WITH_CONVS})
    add_adapter(trained.denoiser, TEMPORAL, trained.lora_targets(TEMPORAL), 4)
    file = save_adapter(trained.denoiser, TEMPORAL, tmp_path / "1_unet.safetensors")
    plain = load_components(str(tiny_model_dir))
    with pytest.raises(UserError, match=r"layer .*temp_convs.* is not a temporal LoRA layer of this model"):
        load_adapter(plain.denoiser, file, TEMPORAL, plain.lora_targets(TEMPORAL))


def test_training_with_temp_convs_trains_them_and_writes_them(tiny_model_dir, tmp_path):
    from utils.training.config import load_config
    from utils.training.trainer import run

    overrides = {
        "pretrained_model_path": str(tiny_model_dir), "output_dir": str(tmp_path),
        "train_data.single_video_path": str(CLIP), "train_data.n_sample_frames": 4, "train_data.frame_step": 4,
        "validation_data.num_frames": 4, "validation_data.num_inference_steps": 2, "validation_data.noise_prior": 0.0,
        "max_train_steps": 3, "checkpointing_steps": 3, "validation_steps": 100,
        "lora_layers.temporal": "[attn1,attn2,ff,temp_convs]",
    }
    cfg = load_config(str(REPO / "configs" / "config_tiny_cpu.yaml"), [f"{k}={v}" for k, v in overrides.items()])
    run_dir = run(cfg)
    temporal = load_file(str(run_dir / "temporal" / "lora" / "3_unet.safetensors"))
    conv_ups = {k: v for k, v in temporal.items() if ".temp_convs." in k and k.endswith("lora_B.weight")}
    assert len(conv_ups) == 32
    assert all(v.abs().max() > 0 for v in conv_ups.values())  # zero at the start: trained
    spatial = load_file(str(run_dir / "spatial" / "lora" / "3_unet.safetensors"))
    assert not any(".temp_convs." in k for k in spatial)


def test_the_transfer_probe_takes_the_temporal_convs_of_the_parts_it_names(tiny_model_dir):
    from utils.toy_world.transfer import temporal_conv_targets

    components = load_components(str(tiny_model_dir))
    # the mid block has two temporal conv blocks; conv1 is (GroupNorm, SiLU, Conv3d), conv2-4 add a Dropout
    assert temporal_conv_targets(components, ("mid_block",)) == [
        f"mid_block.temp_convs.{block}.{conv}" for block in (0, 1)
        for conv in ("conv1.2", "conv2.3", "conv3.3", "conv4.3")]
    everywhere = ("transformer_in", "down_blocks", "mid_block", "up_blocks")
    assert len(temporal_conv_targets(components, everywhere)) == 32
