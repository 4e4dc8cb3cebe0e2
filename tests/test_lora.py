"""LoRA placement, the single-frame rule, init, and adapter save/load."""

import json

import pytest
import torch

from models.lora import (
    SPATIAL,
    TEMPORAL,
    activate,
    adapter_parameters,
    add_adapter,
    set_scale,
)
from models.lora_io import load_adapter, read_lora_config, save_adapter
from models.bases.zeroscope import load_unet
from utils.errors import UserError
from helpers import lora_targets


def _unet_out(unet, latents, ehs, t=500):
    with torch.no_grad():
        return unet(latents, torch.tensor([t]), encoder_hidden_states=ehs).sample


@pytest.fixture(scope="module")
def reference(original_md):
    return json.loads((original_md / "reference.json").read_text())


def test_target_layers_equal_the_originals(original_md, reference):
    unet = load_unet(str(original_md / "tiny_t2v"))
    lists = reference["lora_module_lists"]
    spatial, temporal = lora_targets(unet, SPATIAL), lora_targets(unet, TEMPORAL)
    assert (len(spatial), len(temporal)) == (24, 50)
    assert spatial == [row["module"] for row in lists["Transformer2DModel"]]
    assert temporal == [row["module"] for row in lists["TransformerTemporalModel"]]


def test_target_layers_exclude_cross_attention_and_projections(tiny_model_dir):
    unet = load_unet(str(tiny_model_dir))
    spatial, temporal = lora_targets(unet, SPATIAL), lora_targets(unet, TEMPORAL)
    assert not any(".attn2." in n or "proj_in" in n or "proj_out" in n for n in spatial)
    assert any(n.startswith("transformer_in.") for n in temporal)
    assert any(".attn2." in n for n in temporal)
    assert not set(spatial) & set(temporal)


@pytest.mark.parametrize("frames", [8, 1])
def test_single_frame_rule_matches_original_unet(original_md, frames):
    """Against the original with gradient checkpointing on (every shipped config trained so)."""
    unet = load_unet(str(original_md / "tiny_t2v")).eval()
    latents = torch.load(original_md / f"inputs/input_latents_1x4x{frames}x8x8.pt")
    ehs = torch.load(original_md / "inputs/input_encoder_hidden_states_1x77x32.pt")
    expected = torch.load(original_md / f"outputs_gc/out_nolora_{frames}f_gc.pt")
    assert (_unet_out(unet, latents, ehs) - expected).abs().max() < 1e-5


def _bypass_temporal_layers(unet):
    """The stock UNet with every temporal module as identity: the single-frame rule by hand."""
    from diffusers.models.resnet import TemporalConvLayer
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput

    for module in unet.modules():
        if isinstance(module, TemporalConvLayer):
            module.forward = lambda hidden_states, num_frames=1: hidden_states
        elif type(module).__name__ == "TransformerTemporalModel":
            module.forward = lambda hidden_states, *a, return_dict=True, **k: (
                TransformerTemporalModelOutput(sample=hidden_states) if return_dict else (hidden_states,))
    return unet


def test_single_frame_rule_skips_every_temporal_layer(tiny_model_dir):
    from diffusers import UNet3DConditionModel

    ours = load_unet(str(tiny_model_dir)).eval()
    stock = UNet3DConditionModel.from_pretrained(str(tiny_model_dir), subfolder="unet").eval()
    bypassed = _bypass_temporal_layers(UNet3DConditionModel.from_pretrained(str(tiny_model_dir), subfolder="unet").eval())
    torch.manual_seed(0)
    one, many, ehs = torch.randn(1, 4, 1, 8, 8), torch.randn(1, 4, 3, 8, 8), torch.randn(1, 77, 32)
    assert torch.equal(_unet_out(ours, many, ehs), _unet_out(stock, many, ehs))
    assert (_unet_out(ours, one, ehs) - _unet_out(stock, one, ehs)).abs().max() > 1e-3
    assert torch.equal(_unet_out(ours, one, ehs), _unet_out(bypassed, one, ehs))
    assert set(ours.state_dict()) == set(stock.state_dict())


def test_lora_init_and_rank_cap(tiny_model_dir):
    unet = load_unet(str(tiny_model_dir))
    torch.manual_seed(0)
    add_adapter(unet, TEMPORAL, lora_targets(unet, TEMPORAL), rank=48, dropout=0.1)  # above some layers' width: capped per layer
    modules = dict(unet.named_modules())
    ranks = set()
    for name in lora_targets(unet, TEMPORAL):
        layer = modules[name]
        down, up = layer.lora_A[TEMPORAL].weight, layer.lora_B[TEMPORAL].weight
        base = layer.get_base_layer()
        rank = min(48, base.in_features, base.out_features)
        ranks.add(rank)
        assert down.shape == (rank, base.in_features) and up.shape == (base.out_features, rank)
        assert torch.count_nonzero(up) == 0
        assert layer.scaling[TEMPORAL] == 1.0  # alpha = r: the LoRA term is up(down(x)) * scale
    assert ranks == {32, 48}
    big = modules["transformer_in.transformer_blocks.0.attn1.to_q"].lora_A[TEMPORAL].weight
    assert abs(big.std().item() - 1 / 48) < 0.005  # down ~ N(0, 1/r)


def test_fresh_lora_under_a_bf16_model_is_the_fp32_draw_unrounded(tiny_model_dir):
    """The trainer's fresh adapters on a bf16 frozen UNet: float32 down weights equal, bit for bit,
    what an fp32 UNet draws from the same seed (peft alone would round them through bf16), and
    the frozen weights come back unchanged."""
    from pathlib import Path

    from models.bases import Components
    from utils.training.config import load_config
    from utils.training.trainer import add_adapters
    from helpers import ZEROSCOPE

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "config_tiny_cpu.yaml"),
                      [f"pretrained_model_path={tiny_model_dir}", "output_dir=unused"])
    downs = {}
    for dtype in (torch.float32, torch.bfloat16):
        unet = load_unet(str(tiny_model_dir), dtype=dtype)
        frozen = {k: v.clone() for k, v in unet.state_dict().items()}
        torch.manual_seed(0)
        adapters = add_adapters(cfg, Components(ZEROSCOPE, None, None, None, unet, None), 2, None)
        downs[dtype] = {n: p.detach().clone() for n, p in unet.named_parameters() if ".lora_A." in n}
        assert all(p.dtype == torch.float32 for plist in adapters.params.values() for p in plist)
        after = {k.replace("base_layer.", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}
        assert after.keys() == frozen.keys() and all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert len(downs[torch.float32]) == 50 + 2 * 24  # temporal + one spatial LoRA per clip
    for name, down in downs[torch.float32].items():
        assert torch.equal(downs[torch.bfloat16][name], down), name
    rounded = down.to(torch.bfloat16).float()
    assert not torch.equal(rounded, down)  # what peft's cast alone would have given


def test_fresh_adapter_changes_nothing_until_trained(tiny_model_dir):
    unet = load_unet(str(tiny_model_dir)).eval()
    torch.manual_seed(0)
    latents, ehs = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 77, 32)
    before = _unet_out(unet, latents, ehs)
    add_adapter(unet, TEMPORAL, lora_targets(unet, TEMPORAL), rank=4)
    add_adapter(unet, SPATIAL, lora_targets(unet, SPATIAL), rank=4)
    assert torch.equal(before, _unet_out(unet, latents, ehs))


def _randomize(unet, name, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in adapter_parameters(unet, name):
        p.data = torch.randn(p.shape, generator=generator) * 0.05


def test_save_load_round_trip_gives_identical_outputs(tiny_model_dir, tmp_path):
    unet = load_unet(str(tiny_model_dir)).eval()
    for name, seed in ((TEMPORAL, 1), (SPATIAL, 2)):
        add_adapter(unet, name, lora_targets(unet, name), rank=4)
        _randomize(unet, name, seed)
        save_adapter(unet, name, tmp_path / name / "lora" / "7_unet.safetensors")
    activate(unet, [SPATIAL, TEMPORAL])
    set_scale(unet, TEMPORAL, 0.5)
    torch.manual_seed(0)
    latents, ehs = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 77, 32)
    expected = _unet_out(unet, latents, ehs)

    reloaded = load_unet(str(tiny_model_dir)).eval()
    load_adapter(reloaded, tmp_path / TEMPORAL / "lora", TEMPORAL, lora_targets(reloaded, TEMPORAL), scale=0.5)
    load_adapter(reloaded, tmp_path / SPATIAL / "lora", SPATIAL, lora_targets(reloaded, SPATIAL))
    activate(reloaded, [SPATIAL, TEMPORAL])
    assert torch.equal(expected, _unet_out(reloaded, latents, ehs))
    config = read_lora_config(tmp_path / TEMPORAL / "lora" / "7_unet.safetensors")
    assert config["r"] == 4 and config["lora_alpha"] == 4 and len(config["target_modules"]) > 0


def test_original_checkpoint_into_wrong_model_is_a_clear_error(original_md, tiny_model_dir, tmp_path):
    # An original spatial list file (24 layers) offered as the temporal path (50 layers).
    unet = load_unet(str(tiny_model_dir))
    with pytest.raises(UserError, match="24 LoRA layers but the model's temporal path has 50"):
        load_adapter(unet, original_md / "checkpoint-4/spatial/lora", TEMPORAL, lora_targets(unet, TEMPORAL))


def test_safetensors_with_wrong_shapes_is_a_clear_error(tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    unet = load_unet(str(tiny_model_dir))
    name = lora_targets(unet, TEMPORAL)[0]
    state = {}
    for target in lora_targets(unet, TEMPORAL):
        state[f"{target}.lora_A.weight"] = torch.zeros(4, 32)
        state[f"{target}.lora_B.weight"] = torch.zeros(32, 4)
    state[f"{name}.lora_A.weight"] = torch.zeros(4, 48)
    save_file(state, str(tmp_path / "1_unet.safetensors"))
    with pytest.raises(UserError, match="wrong base model"):
        load_adapter(unet, tmp_path, TEMPORAL, lora_targets(unet, TEMPORAL))


def test_empty_lora_folder_lists_its_contents(tiny_model_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="notes.txt"):
        unet = load_unet(str(tiny_model_dir))
        load_adapter(unet, tmp_path, TEMPORAL, lora_targets(unet, TEMPORAL))


def test_interleaved_multi_clip_spatial_file_is_refused_with_a_reason(tiny_model_dir):
    from models.lora_io import original_list_to_state_dict

    unet = load_unet(str(tiny_model_dir))
    layers = len(lora_targets(unet, SPATIAL))
    two_clips = [torch.zeros(1)] * (2 * 2 * layers)
    with pytest.raises(UserError, match="holds 2 LoRAs per spatial layer.*2-clip run"):
        original_list_to_state_dict(two_clips, lora_targets(unet, SPATIAL), SPATIAL)
    with pytest.raises(UserError, match="another base model"):
        original_list_to_state_dict([torch.zeros(1)] * 6, lora_targets(unet, SPATIAL), SPATIAL)
