"""The tiny random Wan 2.1 pipeline the tests build offline: stock diffusers / transformers /
tokenizers classes with small configs, assembled by the stock `WanPipeline` and saved with its
`save_pretrained`, so the folder is what a hub download looks like.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from models.bases import tiny_parts
from models.bases.wan_parts import SCHEDULER_CONFIG

# Two blocks of two 12-wide heads (rope splits 12 into 4 + 4 + 4); 64x64x9 clips are 3x8x8 latents.
# Rope positions up to 128 per axis: frames up to 2048 pixels wide.
TINY_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=128)
# Three downsamples in space (8x) and two in time (4x) as the real VAE, 3 channels wide.
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_TEXT_ENCODER = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # UMT5's pad 0 and eos 1
WORDS = ("a", "an", "the", "is", "are", "car", "running", "on", "road", "tank", "in", "desert", "tiger", "forest",
         "ball", "square", "circle", "shape", "moving", "to", "right", "left", "up", "down", "fast", "grass")


def word_tokenizer(length: int = 512, words: tuple[str, ...] = WORDS):
    """A word-level fast tokenizer over `words` (lower case, unknown words -> <unk>) that ends every
    prompt with </s> as UMT5's tokenizer does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                  unk_token="<unk>", model_max_length=length)


def umt5_encoder(vocab_size: int, **config):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1,
                                       decoder_start_token_id=0, **config))


def stand_in_text_encoder(vocab_size: int, width: int):
    """A one-layer UMT5 of the real width (4096), for benchmarks that need the text states' size only."""
    return umt5_encoder(vocab_size, d_model=width, d_kv=64, d_ff=256, num_layers=1, num_heads=4,
                        relative_attention_num_buckets=32)


def build_tiny_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random WanPipeline folder (deterministic in `seed`; global RNG untouched)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    out = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        tokenizer = word_tokenizer()
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**TINY_TRANSFORMER)
        # The cross-attention norm's bias starts at zero, norms at one: random, so every path shows.
        tiny_parts.randomize_zero_and_norm_params(transformer, torch.Generator().manual_seed(seed + 1))
        torch.manual_seed(seed + 2)
        vae = AutoencoderKLWan(**TINY_VAE)
        torch.manual_seed(seed + 3)
        text_encoder = umt5_encoder(len(tokenizer), **TINY_TEXT_ENCODER)
    scheduler = UniPCMultistepScheduler.from_config(SCHEDULER_CONFIG)
    pipeline = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                           transformer=transformer)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(tmp)
    return move_into(tmp, out)


def move_into(built: Path, out: Path) -> Path:
    """Move a built pipeline folder's entries into `out`, model_index.json last: its presence
    marks a complete folder (save_pretrained writes it first)."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(built.iterdir(), key=lambda p: p.name == "model_index.json"):
        if (out / entry.name).is_dir():
            shutil.rmtree(out / entry.name)
        os.replace(entry, out / entry.name)
    built.rmdir()
    return out
