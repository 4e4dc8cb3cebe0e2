"""The overhead cuts of issue 13 change nothing but speed: the cached UNet dtype."""

import torch

from models.unet import CachedDtypeUNet3D, cache_dtype, load_unet
from diffusers import UNet3DConditionModel


def test_cached_dtype_is_the_stock_dtype_and_follows_casts(tiny_model_dir):
    unet = load_unet(str(tiny_model_dir))
    assert type(unet) is CachedDtypeUNet3D and isinstance(unet, UNet3DConditionModel)
    assert unet.dtype == UNet3DConditionModel.dtype.fget(unet) == torch.float32
    unet.to(torch.bfloat16)
    assert unet.dtype == torch.bfloat16
    unet.float()
    assert unet.dtype == torch.float32
    assert cache_dtype(unet) is unet and type(unet) is CachedDtypeUNet3D  # idempotent


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
    from models.pipeline import PromptCache, encode_prompts, load_components

    c = load_components(str(tiny_model_dir), torch.device("cpu"), torch.float32)
    expected = encode_prompts(c.tokenizer, c.text_encoder, ["a car", "a dog"])
    on_cpu = PromptCache(c.tokenizer, c.text_encoder)
    assert torch.equal(on_cpu(["a car", "a dog"]), expected)
    on_meta = PromptCache(c.tokenizer, c.text_encoder, torch.device("meta"))  # stands in for a GPU
    out = on_meta(["a dog", "a dog"])
    assert out.device.type == "meta" and out.shape == (2, *expected.shape[1:])
    assert on_meta._cache["a dog"].device.type == "meta"  # stored there once, not copied per call
