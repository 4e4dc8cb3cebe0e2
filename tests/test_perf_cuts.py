"""The overhead cuts of issue 13 change nothing but speed: the cached UNet dtype, lean attention calls."""

from pathlib import Path

import torch
import torch.nn.functional as F

from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import Attention

from models.bases.zeroscope import load_unet
from models.fast_layers import CachedDtype, LeanAttention, cache_dtype
from helpers import ZEROSCOPE, lora_targets


def test_cached_dtype_is_the_stock_dtype_and_follows_casts(tiny_model_dir):
    unet = load_unet(str(tiny_model_dir))
    assert isinstance(unet, CachedDtype) and isinstance(unet, UNet3DConditionModel)
    assert unet.dtype == UNet3DConditionModel.dtype.fget(unet) == torch.float32
    unet.to(torch.bfloat16)
    assert unet.dtype == torch.bfloat16
    unet.float()
    assert unet.dtype == torch.float32
    cls = type(unet)
    assert cache_dtype(unet) is unet and type(unet) is cls  # idempotent


def test_cached_dtype_leaves_weights_and_outputs_unchanged(tiny_model_dir):
    cached = load_unet(str(tiny_model_dir)).eval()
    stock = load_unet(str(tiny_model_dir)).eval()
    stock.__class__ = UNet3DConditionModel
    assert list(cached.state_dict()) == list(stock.state_dict())
    torch.manual_seed(0)
    sample = torch.randn(1, 4, 3, 8, 8)
    context = torch.randn(1, 5, stock.config.cross_attention_dim)
    with torch.no_grad():
        a = cached(sample, 10, encoder_hidden_states=context).sample
        b = stock(sample, 10, encoder_hidden_states=context).sample
    assert torch.equal(a, b)


def test_prompt_cache_keeps_embeddings_on_the_training_device(tiny_model_dir):
    from models.bases import load_components
    from utils.training.prompt_cache import PromptCache

    c = load_components(str(tiny_model_dir), torch.device("cpu"), torch.float32)
    expected = c.encode_prompts(["a car", "a dog"])
    on_cpu = PromptCache(c)
    assert torch.equal(on_cpu(["a car", "a dog"]), expected)
    on_meta = PromptCache(c, torch.device("meta"))  # stands in for a GPU
    out = on_meta(["a dog", "a dog"])
    assert out.device.type == "meta" and out.shape == (2, *expected.shape[1:])
    assert on_meta._cache["a dog"].device.type == "meta"  # stored there once, not copied per call


def test_lean_attention_gives_the_stock_outputs_and_gradients(tiny_model_dir):
    lean = load_unet(str(tiny_model_dir))
    stock = load_unet(str(tiny_model_dir))
    attentions = [m for m in lean.modules() if isinstance(m, Attention)]
    assert attentions and all(type(m) is LeanAttention for m in attentions)
    for module in stock.modules():
        if type(module) is LeanAttention:
            module.__class__ = Attention
    assert list(lean.state_dict()) == list(stock.state_dict())
    torch.manual_seed(0)
    sample = torch.randn(1, 4, 3, 8, 8)
    context = torch.randn(1, 5, stock.config.cross_attention_dim)
    outputs = []
    for unet in (lean, stock):
        unet.eval().requires_grad_(True)
        out = unet(sample, 10, encoder_hidden_states=context).sample
        out.square().mean().backward()
        outputs.append((out.detach(), unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_q.weight.grad))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def test_lean_attention_passes_extra_kwargs_through_the_stock_filter(tiny_model_dir, monkeypatch):
    from diffusers.models import attention_processor

    warnings = []
    monkeypatch.setattr(attention_processor.logger, "warning", warnings.append)
    attention = next(m for m in load_unet(str(tiny_model_dir)).modules() if isinstance(m, LeanAttention))
    hidden = torch.randn(2, 16, attention.query_dim)
    plain = attention(hidden)
    assert warnings == []
    # an unknown kwarg takes the stock path: diffusers warns and drops it, the result is unchanged
    assert torch.equal(attention(hidden, not_a_processor_argument=1.0), plain)
    assert len(warnings) == 1 and "not_a_processor_argument" in warnings[0]


def test_lean_lora_linear_is_bit_identical_to_peft(tiny_model_dir):
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    from models.fast_layers import LeanLoraLinear
    from models.lora import activate, add_adapter, lora_layers

    unets = [load_unet(str(tiny_model_dir)) for _ in range(2)]
    for unet in unets:
        torch.manual_seed(0)
        add_adapter(unet, "temporal", lora_targets(unet, "temporal"), 4, dropout=0.1)
        add_adapter(unet, "spatial", lora_targets(unet, "spatial"), 4, dropout=0.1)
        for layer in lora_layers(unet):  # non-zero up weights, so the LoRA term counts
            for up in layer.lora_B.values():
                torch.nn.init.normal_(up.weight, std=0.1)
        activate(unet, ["temporal", "spatial"])
        unet.train().requires_grad_(True)
    assert all(type(m) is LeanLoraLinear for m in lora_layers(unets[0]))
    for layer in lora_layers(unets[1]):
        layer.__class__ = PeftLoraLinear
    sample = torch.randn(1, 4, 3, 8, 8)
    context = torch.randn(1, 5, unets[0].config.cross_attention_dim)
    results = []
    for unet in unets:
        torch.manual_seed(1)  # the same dropout masks
        out = unet(sample, 10, encoder_hidden_states=context).sample
        out.square().mean().backward()
        grads = [p.grad for n, p in unet.named_parameters() if "lora_" in n]
        results.append((out.detach(), grads))
    assert torch.equal(results[0][0], results[1][0])
    assert len(results[0][1]) == len(results[1][1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def _bf16_autocast_layer(tiny_model_dir, dropout):
    from models.lora import add_adapter, lora_layers

    unet = load_unet(str(tiny_model_dir), dtype=torch.bfloat16)  # frozen weights in bf16, as the trainer
    torch.manual_seed(0)
    add_adapter(unet, "temporal", lora_targets(unet, "temporal"), 4, dropout=dropout, dtype=torch.float32)
    layer = lora_layers(unet)[0]
    torch.nn.init.normal_(layer.lora_B["temporal"].weight, std=0.1)
    layer.train()
    layer.lora_A["temporal"].weight.requires_grad_(True)
    layer.lora_B["temporal"].weight.requires_grad_(True)
    return layer


def test_lean_lora_linear_under_bf16_autocast_equals_peft_without_dropout(tiny_model_dir):
    """With dropout off, running the branch in bf16 changes no value: peft's float32 copy of the
    input is cast back to bf16 by autocast for the matmul. Outputs and fp32 gradients bit-identical."""
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    layer = _bf16_autocast_layer(tiny_model_dir, dropout=0.0)
    weights = [layer.lora_A["temporal"].weight, layer.lora_B["temporal"].weight]
    inputs = (torch.randn(2, 6, layer.in_features), torch.randn(2, 6, layer.in_features).bfloat16())
    results = []
    for cls in (type(layer), PeftLoraLinear):
        layer.__class__ = cls
        for x in inputs:
            with torch.autocast("cpu", torch.bfloat16):
                out = layer(x)
            out.float().square().sum().backward()
            results.append((out.detach(), [w.grad.clone() for w in weights]))
            for w in weights:
                w.grad = None
    for ours, peft in zip(results[:2], results[2:]):
        assert ours[0].dtype == torch.bfloat16 and torch.equal(ours[0], peft[0])
        assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(ours[1], peft[1]))


def test_lean_lora_linear_under_bf16_autocast_drops_out_in_bf16(tiny_model_dir):
    """With dropout: the branch is base(x) + up(down(dropout(x in bf16))), computed by hand with the
    same seed, and no op of the layer makes a float32 tensor the size of its input."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Float32Copies(TorchDispatchMode):
        def __init__(self, numel):
            super().__init__()
            self.numel, self.ops = numel, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() == self.numel:
                    self.ops.append(func.__name__)
            return out

    layer = _bf16_autocast_layer(tiny_model_dir, dropout=0.1)
    x = torch.randn(2, 6, layer.in_features).bfloat16()
    base, down, up = layer.get_base_layer(), layer.lora_A["temporal"].weight, layer.lora_B["temporal"].weight
    copies = Float32Copies(x.numel())
    torch.manual_seed(3)
    with torch.autocast("cpu", torch.bfloat16), copies:
        out = layer(x)
    torch.manual_seed(3)
    with torch.autocast("cpu", torch.bfloat16):
        hand = F.linear(x, base.weight, base.bias) + F.linear(F.linear(F.dropout(x, 0.1, True), down), up)
    assert out.dtype == torch.bfloat16 and torch.equal(out, hand)
    assert copies.ops == []


def test_lean_lora_linear_falls_back_to_peft_when_merged(tiny_model_dir):
    from models.lora import add_adapter, lora_layers

    unet = load_unet(str(tiny_model_dir))
    add_adapter(unet, "temporal", lora_targets(unet, "temporal"), 4)
    layer = lora_layers(unet)[0]
    torch.nn.init.normal_(layer.lora_B["temporal"].weight, std=0.1)
    x = torch.randn(3, layer.in_features)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged and torch.allclose(layer(x), unmerged, atol=1e-6)
    assert torch.allclose(layer.get_base_layer()(x), unmerged, atol=1e-6)  # the merged base carries the LoRA


def test_lean_sdpa_processor_gives_the_stock_outputs_and_gradients(tiny_model_dir):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from models.fast_layers import LeanSdpaProcessor

    unets = [load_unet(str(tiny_model_dir)) for _ in range(2)]
    assert ZEROSCOPE.set_attention_backend(unets[0]) == "sdpa"
    assert all(type(p) is LeanSdpaProcessor for p in unets[0].attn_processors.values())
    unets[1].set_attn_processor(AttnProcessor2_0())
    torch.manual_seed(0)
    sample = torch.randn(1, 4, 3, 8, 8)
    context = torch.randn(1, 5, unets[0].config.cross_attention_dim)
    results = []
    for unet in unets:
        unet.train().requires_grad_(True)
        torch.manual_seed(1)  # the same dropout masks in the temporal convs
        out = unet(sample, 10, encoder_hidden_states=context).sample
        out.square().mean().backward()
        results.append([out.detach()] + [p.grad for p in unet.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_lean_sdpa_processor_takes_the_stock_path_outside_the_plain_case(tiny_model_dir):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from models.fast_layers import LeanSdpaProcessor

    attention = next(m for m in load_unet(str(tiny_model_dir)).modules() if isinstance(m, Attention))
    hidden = torch.randn(2, 16, attention.query_dim)
    lean, stock = LeanSdpaProcessor(), AttnProcessor2_0()
    plain = lean(attention, hidden)
    attention.rescale_output_factor = 2.0  # the stock path divides; the lean one must not skip that
    assert torch.allclose(lean(attention, hidden), plain / 2.0) and torch.equal(lean(attention, hidden),
                                                                                stock(attention, hidden))
    attention.rescale_output_factor, attention.residual_connection = 1.0, True
    assert torch.equal(lean(attention, hidden), plain + hidden)


def test_the_in_process_ab_swaps_the_layer_classes_both_ways(tiny_model_dir):
    """benchmarks/ab_lean_layers.py's setups: stock classes, LeanAttention alone, all lean ones."""
    import sys

    from diffusers.models.attention_processor import AttnProcessor2_0
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    from models.fast_layers import LeanLoraLinear, LeanSdpaProcessor
    from models.lora import add_adapter, lora_layers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ab_lean_layers

    unet = load_unet(str(tiny_model_dir))
    add_adapter(unet, "temporal", lora_targets(unet, "temporal"), 4)
    expected = {"stock": (Attention, PeftLoraLinear, AttnProcessor2_0),
                "lean_attention": (LeanAttention, PeftLoraLinear, AttnProcessor2_0),
                "lean": (LeanAttention, LeanLoraLinear, LeanSdpaProcessor)}
    for setup in ("stock", "lean_attention", "lean", "stock"):
        ab_lean_layers.use_setup(unet, setup)
        attention, lora, processor = expected[setup]
        assert {type(m) for m in unet.modules() if isinstance(m, Attention)} == {attention}
        assert {type(m) for m in lora_layers(unet)} == {lora}
        assert {type(p) for p in unet.attn_processors.values()} == {processor}
