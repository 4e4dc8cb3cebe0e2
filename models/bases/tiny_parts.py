"""Pieces of the tiny random pipelines the tests build offline: a hand-made CLIP tokenizer (byte
level, with whole-word merges so test prompts are a few ids), a small CLIP text encoder, a small
AutoencoderKL and the randomisation that makes zero-initialised layers matter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# Words that get whole-word BPE merges, so the test prompts tokenize to a few ids
# instead of one id per character. With this list the vocab has 547 entries,
# identical to the reference tiny tokenizer.
MERGE_WORDS = ("car", "is", "running", "on", "the", "road", "tank", "in", "desert", "tiger", "forest")
BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "!"


TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,  # 4 blocks -> 3 downsamples -> scale factor 8
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 16, 16, 16),
    layers_per_block=1,
    norm_num_groups=16,
    latent_channels=4,
    sample_size=64,
    scaling_factor=0.18215,
)

TINY_TEXT_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    hidden_act="gelu",
    max_position_embeddings=77,
    projection_dim=32,
    pad_token_id=0,
)


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for the bytes 0..255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that join `word` into a single '</w>' token."""
    merges, head = [], word[0]
    for i, ch in enumerate(word[1:], start=1):
        tail = ch + "</w>" if i == len(word) - 1 else ch
        merges.append((head, tail))
        head += ch
    return merges


def write_clip_tokenizer(folder: Path, words: tuple[str, ...] = MERGE_WORDS) -> int:
    """A CLIP tokenizer from a hand-made vocab: bytes, bytes+'</w>', whole-word merges of `words`."""
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in words:
        for pair in _word_merges(word):
            if pair not in merges:
                merges.append(pair)
    tokens += ["".join(pair) for pair in merges] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", {tok: i for i, tok in enumerate(tokens)})
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": EOS}
    write_json(folder / "special_tokens_map.json", special)
    write_json(
        folder / "tokenizer_config.json",
        {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
         "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"},
    )
    return len(tokens)


def randomize_zero_and_norm_params(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Make every parameter matter: diffusers zero-initialises temporal output layers.

    TemporalConvLayer.conv4 and the temporal transformers' proj_out start at zero,
    so a freshly built UNet3D ignores its temporal path and temporal bugs stay
    invisible. Norm affines are perturbed too, so they are not the identity.
    """
    norm_params = set()
    for module in model.modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            norm_params.update(id(p) for p in module.parameters(recurse=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if id(param) in norm_params:
                param.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif not param.any():
                if param.dim() >= 2:
                    param.copy_(noise / (param[0].numel() ** 0.5))
                else:
                    param.copy_(0.05 * noise)


def save_clip_text_encoder(folder: Path, seed: int, vocab_size: int, config: dict = TINY_TEXT_ENCODER) -> None:
    """A random CLIP text encoder drawn from `seed`, saved with the classic key prefix."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        **config, vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1
    )
    config.architectures = ["CLIPTextModel"]
    model = CLIPTextModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    # transformers 5 saves the keys without a prefix; the classic "text_model."
    # prefix loads in old (4.x) and new transformers alike.
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v.contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


