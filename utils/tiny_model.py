"""A tiny random text-to-video pipeline folder, for tests and smoke runs.

`build_tiny_pipeline(out_dir)` writes the diffusers layout that
`TextToVideoSDPipeline` / ZeroScope use (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/), every weight random, in safetensors,
loadable offline with the usual `from_pretrained(out_dir, subfolder=...)`.

The architecture mirrors the reference tiny model of the original code
(reference.json "tiny_model"): a UNet3D with two 32-channel levels, a VAE with
four blocks (scale factor 8, so 64x64 frames give 8x8 latents), a 2-layer CLIP
text encoder of width 32 and a byte-level CLIP tokenizer with a hand-made vocab.

    python -m utils.tiny_model OUT_DIR [--seed N] [--force]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

# Words that get whole-word BPE merges, so the test prompts tokenize to a few ids
# instead of one id per character. With this list the vocab has 547 entries,
# identical to the reference tiny tokenizer.
MERGE_WORDS = ("car", "is", "running", "on", "the", "road", "tank", "in", "desert", "tiger", "forest")
BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "!"

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 32),  # < 32 is impossible: TemporalConvLayer uses GroupNorm(32, C)
    layers_per_block=1,
    norm_num_groups=32,
    cross_attention_dim=32,
    attention_head_dim=8,
)

VAE_CONFIG = dict(
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

TEXT_ENCODER_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    hidden_act="gelu",
    max_position_embeddings=77,
    projection_dim=32,
    pad_token_id=0,
)

# The (reconstructed) ZeroScope / ModelScope scheduler config.
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.15.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "thresholding": False,
    "trained_betas": None,
}

MODEL_INDEX = {
    "_class_name": "TextToVideoSDPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet3DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _write_json(path: Path, obj: dict) -> None:
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


def write_tokenizer(folder: Path, words: tuple[str, ...] = MERGE_WORDS) -> None:
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
    _write_json(folder / "vocab.json", {tok: i for i, tok in enumerate(tokens)})
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": EOS}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(
        folder / "tokenizer_config.json",
        {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
         "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"},
    )


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


def _save_unet(folder: Path, seed: int) -> None:
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**UNET_CONFIG)
    randomize_zero_and_norm_params(unet, torch.Generator().manual_seed(seed + 1))
    unet.save_pretrained(folder, safe_serialization=True)


def _save_vae(folder: Path, seed: int) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 2)
    AutoencoderKL(**VAE_CONFIG).save_pretrained(folder, safe_serialization=True)


def _save_text_encoder(folder: Path, seed: int, vocab_size: int) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 3)
    config = CLIPTextConfig(
        **TEXT_ENCODER_CONFIG, vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1
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


def build_tiny_pipeline(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random TextToVideoSDPipeline folder to `out_dir` and return its path.

    Deterministic in `seed`; the global torch RNG is left as it was.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        write_tokenizer(out / "tokenizer")
        vocab_size = len(json.loads((out / "tokenizer" / "vocab.json").read_text(encoding="utf-8")))
        _save_unet(out / "unet", seed)
        _save_vae(out / "vae", seed)
        _save_text_encoder(out / "text_encoder", seed, vocab_size)
    _write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    _write_json(out / "model_index.json", MODEL_INDEX)  # last: its presence marks a complete folder
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random text-to-video pipeline folder.")
    parser.add_argument("out_dir", type=Path, help="folder to write the pipeline into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR/model_index.json exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (args.out_dir / "model_index.json").exists() and not args.force:
        logger.info("%s already holds a pipeline (model_index.json); skipping (use --force to rebuild)", args.out_dir)
        return
    path = build_tiny_pipeline(args.out_dir, seed=args.seed)
    logger.info("wrote tiny pipeline to %s", path)


if __name__ == "__main__":
    main()
