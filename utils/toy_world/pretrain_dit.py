"""Pretraining a tiny Wan 2.1-architecture base (a DiT) on the toy world's vocabulary, on a CPU.

The result is a `WanPipeline` folder in the diffusers layout (WanTransformer3DModel, the causal 3D
AutoencoderKLWan, a frozen random UMT5 encoder with a whole-word tokenizer, Wan's UniPC flow
scheduler), loaded by every script of the project through the Wan base. Clips are 9 frames
(`world.DIT_FRAMES`): Wan's VAE reads a lone first frame, then groups of 4, so a clip has 4k + 1 frames;
the VAE halves time once (`DitSettings.vae_temporal_factor`, Wan 2.1's is 4), so 9 frames are 5
latent frames of 8x8.

Two stages, each resumable (a checkpoint every `checkpoint_every` steps; the data of step k is a
function of (seed, k)):
* the VAE, on whole 9-frame clips of every motion (held-out ones too: it learns appearance and
  compression, not which motions exist) and on lone frames (the spatial path encodes each frame
  alone as a one-frame video); then its per-channel latent mean and std, which Wan's pipeline
  and trainers normalise with;
* the transformer, with the Wan base's own flow-matching target and timestep draw
  (`WanBase.draw_timesteps`, `add_noise`, `target`) on every caption's family of paths
  (`world.family_specs`), prompt dropout for guidance, EMA weights saved.
Unlike the UNet base no binding stage is needed: rope gives every token its frame index, so
direction words are bound by the plain loss (the UNet's temporal attention is blind to frame order).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.toy_world import world
from utils.toy_world.base_parts import WORDS
from utils.toy_world.pretrain import (
    StageSettings,
    learning_rate,
    load_checkpoint,
    save_checkpoint,
    step_generator,
    update_ema,
    vae_loss,
)

logger = logging.getLogger(__name__)

TEXT_LENGTH = 512  # WanPipeline's max_sequence_length: the states the transformer is trained on
# 3 heads of 32 (rope splits 32 into 12 + 10 + 10), 6 blocks; 2x2 patches of 8x8 latents: 16 tokens a latent frame.
TRANSFORMER_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=32, in_channels=16,
                          out_channels=16, text_dim=32, freq_dim=64, ffn_dim=256, num_layers=6, cross_attn_norm=True,
                          qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
# Wan's VAE structure (8x in space, 16 latent channels), 8 channels at the first level; its
# downsampling in time follows `DitSettings.vae_temporal_factor` (`vae_config`).
VAE_CONFIG = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)


def vae_config(temporal_factor: int) -> dict:
    """VAE_CONFIG compressing time by `temporal_factor` (2 or 4: one or two of its downsamplings halve
    time too), the factor stated where WanPipeline reads it (`scale_factor_temporal`)."""
    if temporal_factor not in (2, 4):
        raise ValueError(f"vae_temporal_factor must be 2 or 4, got {temporal_factor}")
    return dict(VAE_CONFIG, temperal_downsample=[False, temporal_factor == 4, True], scale_factor_temporal=temporal_factor)


TEXT_ENCODER_CONFIG = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8)


@dataclass
class DitSettings(StageSettings):
    vae_steps: int = 900
    vae_clips: int = 4  # whole clips per VAE step
    vae_frames: int = 8  # lone frames (one-frame videos) per VAE step
    # Time compression of the VAE. Wan 2.1's 4 is too much for this 8-channel VAE: it returned each
    # group of 4 frames at about their mean place, so no loop survived (docs/toy_world.md). 2 keeps
    # a loop frame by frame; a 9-frame clip is then 5 latent frames (80 tokens instead of 48).
    vae_temporal_factor: int = 2
    steps: int = 5000
    batch: int = 16
    lr: float = 1e-3


# ----------------------------------------------------------------------------- text and folder


def write_text_parts(out: Path, seed: int) -> None:
    """The whole-word tokenizer over the world's words and the frozen, seeded random UMT5."""
    from models.bases.wan_tiny import umt5_encoder, word_tokenizer

    if (out / "text_encoder" / "config.json").is_file():
        return
    tokenizer = word_tokenizer(TEXT_LENGTH, WORDS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        text_encoder = umt5_encoder(len(tokenizer), **TEXT_ENCODER_CONFIG)
    tokenizer.save_pretrained(out / "tokenizer")
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)


def write_pipeline(out: Path, transformer) -> None:
    """The WanPipeline folder from the parts on disk and `transformer`; model_index.json last."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    from models.bases.wan_parts import SCHEDULER_CONFIG
    from models.bases.wan_tiny import move_into

    pipeline = WanPipeline(tokenizer=AutoTokenizer.from_pretrained(out / "tokenizer"),
                           text_encoder=UMT5EncoderModel.from_pretrained(out / "text_encoder"),
                           vae=AutoencoderKLWan.from_pretrained(out / "vae"), transformer=transformer,
                           scheduler=UniPCMultistepScheduler.from_config(SCHEDULER_CONFIG))
    built = out.with_name(out.name + ".tmp")
    shutil.rmtree(built, ignore_errors=True)
    pipeline.save_pretrained(built)
    move_into(built, out)


# ----------------------------------------------------------------------------- VAE stage


def clip_pixels(specs: list[world.ClipSpec]) -> torch.Tensor:
    """(len(specs), 3, DIT_FRAMES, H, W) in [-1, 1]: the rendered 9-frame clips."""
    clips = np.stack([world.render(spec, world.DIT_FRAMES) for spec in specs])
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def random_clips(gen: torch.Generator, count: int) -> torch.Tensor:
    """`clip_pixels` of `count` random clips of every family and new motion."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    combos = world.all_combinations(world.FAMILIES + world.NEW_MOTIONS)
    specs = []
    for _ in range(count):
        shape, color, motion = combos[rng.integers(len(combos))]
        member = world.random_member(rng, motion) if motion in world.FAMILIES else None
        specs.append(world.random_spec(rng, shape, color, motion, member=member, frames=world.DIT_FRAMES))
    return clip_pixels(specs)


def train_vae(out: Path, settings: DitSettings, deadline: float) -> bool:
    """Train (or resume) the VAE on clips and lone frames; True when it has all its steps."""
    from diffusers import AutoencoderKLWan

    if (out / "vae" / "config.json").is_file():
        return True
    ckpt_path = out / "checkpoints" / "vae.pt"
    torch.manual_seed(settings.seed + 2)
    vae = AutoencoderKLWan(**vae_config(settings.vae_temporal_factor))
    start_certain(vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    step = 0
    if (ckpt := load_checkpoint(ckpt_path)) is not None:
        vae.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
    started, recent = time.time(), []
    while step < settings.vae_steps and time.time() < deadline:
        gen = step_generator(settings.seed, "dit_vae", step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings.vae_lr, settings.warmup_steps, settings.vae_steps)
        clips = random_clips(gen, settings.vae_clips + settings.vae_frames)
        frame = torch.randint(0, world.DIT_FRAMES, (1,), generator=gen).item()
        whole, mse = vae_loss(vae, clips[: settings.vae_clips], settings.kl_weight, gen)
        lone, _ = vae_loss(vae, clips[settings.vae_clips:, :, frame:frame + 1], settings.kl_weight, gen)
        optimizer.zero_grad(set_to_none=True)
        (whole + 0.5 * lone).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        recent.append(mse)
        if step % settings.checkpoint_every == 0 or step == settings.vae_steps:
            logger.info("vae step %d/%d  clip mse %.5f  (%.2f s/step)", step, settings.vae_steps,
                        float(np.mean(recent[-settings.checkpoint_every:])), (time.time() - started) / len(recent))
            save_checkpoint(ckpt_path, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step})
    save_checkpoint(ckpt_path, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step})
    if step < settings.vae_steps:
        return False
    vae.eval()
    mean, std = latent_statistics(vae, settings.seed)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    logger.info("vae done: latent std per channel %s", [round(s, 3) for s in std])
    return True


@torch.no_grad()
def start_certain(vae, log_variance: float = -8.0) -> None:
    """Start the posterior's log-variance at `log_variance` everywhere (the quant conv's log-variance
    half: zero weights, that bias). At its random start the posterior std is ~1, as large as the
    latents, and the decoder first learns from noise (clip MSE stuck at the data's variance for 200
    steps here); the KL term may still raise it."""
    z_dim = vae.config.z_dim
    vae.quant_conv.weight[z_dim:] = 0.0
    vae.quant_conv.bias[z_dim:] = log_variance


@torch.no_grad()
def latent_statistics(vae, seed: int, count: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means of `count` random clips."""
    clips = random_clips(torch.Generator().manual_seed(seed + 99), count)
    latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in clips.split(8)])
    return latents.mean(dim=(0, 2, 3, 4)).tolist(), latents.std(dim=(0, 2, 3, 4)).tolist()


# ----------------------------------------------------------------------------- transformer stage


@torch.no_grad()
def encode_family_clips(out: Path, settings: DitSettings) -> dict:
    """Normalised latent means (N, 16, latent frames, 8, 8) and caption index of every family clip, cached."""
    from diffusers import AutoencoderKLWan

    from models.bases.wan_parts import latent_statistics as folder_statistics

    cache = out / "checkpoints" / "family_latents.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    vae = AutoencoderKLWan.from_pretrained(out / "vae").eval()
    mean, std = folder_statistics(vae, "cpu")
    specs = world.family_specs(settings.clips_per_family_caption, settings.seed + 5, frames=world.DIT_FRAMES)
    latents = [(vae.encode(clip_pixels(specs[chunk:chunk + 16])).latent_dist.mean - mean) / std
               for chunk in range(0, len(specs), 16)]
    captions = sorted({s.caption for s in specs})
    data = {"latents": torch.cat(latents), "captions": captions,
            "caption_index": torch.tensor([captions.index(s.caption) for s in specs])}
    save_checkpoint(cache, data)
    logger.info("encoded %d clips (%d captions)", len(specs), len(captions))
    return data


def caption_states(out: Path, captions: list[str]) -> torch.Tensor:
    """(len(captions) + 1, 512, 32) UMT5 states as WanPipeline makes them; the last is the empty prompt."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    from models.bases.wan_parts import umt5_states

    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    text_encoder = UMT5EncoderModel.from_pretrained(out / "text_encoder").eval()
    return umt5_states(tokenizer, text_encoder, list(captions) + [""], TEXT_LENGTH, "cpu")


def flow_loss(base, transformer, scheduler, latents, text, gen: torch.Generator) -> torch.Tensor:
    """The Wan base's (`base`) training loss: its timestep draw, noising and velocity target."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        timesteps = base.draw_timesteps(scheduler, latents.shape[0], "cpu")
    noise = torch.randn(latents.shape, generator=gen)
    noisy = base.add_noise(scheduler, latents, noise, timesteps)
    pred = base.predict(transformer, noisy, timesteps, text)
    return torch.nn.functional.mse_loss(pred, base.target(scheduler, latents, noise, timesteps))


def train_transformer(out: Path, settings: DitSettings, deadline: float) -> bool:
    """Train (or resume) the transformer on the family clips; True when it has all its steps."""
    from diffusers import WanTransformer3DModel

    from models.bases.wan import WanBase
    from models.bases.wan_parts import SCHEDULER_CONFIG, flow_scheduler_of

    base, scheduler = WanBase(), flow_scheduler_of(SCHEDULER_CONFIG)
    torch.manual_seed(settings.seed)
    transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=settings.lr, weight_decay=1e-2)
    ema, step = {k: v.detach().clone() for k, v in transformer.state_dict().items()}, 0
    ckpt_path = out / "checkpoints" / "transformer.pt"
    if (ckpt := load_checkpoint(ckpt_path)) is not None:
        transformer.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        ema, step = ckpt["ema"], ckpt["step"]
    data = encode_family_clips(out, settings)
    states = caption_states(out, data["captions"])
    transformer.train()
    started, recent = time.time(), []

    def checkpoint():
        save_checkpoint(ckpt_path, {"model": transformer.state_dict(), "optimizer": optimizer.state_dict(),
                                    "ema": ema, "step": step})
        live = {k: v.clone() for k, v in transformer.state_dict().items()}
        transformer.load_state_dict(ema)
        write_pipeline(out, transformer)
        transformer.load_state_dict(live)

    while step < settings.steps and time.time() < deadline:
        gen = step_generator(settings.seed, "dit", step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings.lr, settings.warmup_steps, settings.steps)
        index = torch.randint(0, len(data["latents"]), (settings.batch,), generator=gen)
        caption = data["caption_index"][index]
        dropped = torch.rand(settings.batch, generator=gen) < settings.uncond_prob
        caption = torch.where(dropped, torch.full_like(caption, len(states) - 1), caption)
        loss = flow_loss(base, transformer, scheduler, data["latents"][index], states[caption], gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, transformer, step, settings.ema_decay)
        step += 1
        recent.append(loss.item())
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            logger.info("transformer step %d/%d  loss %.4f  (%.3f s/step)", step, settings.steps,
                        float(np.mean(recent[-settings.checkpoint_every:])), (time.time() - started) / len(recent))
        if step % (10 * settings.checkpoint_every) == 0:
            checkpoint()
    checkpoint()
    return step >= settings.steps


def pretrain_dit(out_dir: str | Path, settings: DitSettings) -> bool:
    """Run (or resume) both stages into `out_dir`; True when both are complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + settings.time_budget_s
    write_text_parts(out, settings.seed)
    if not train_vae(out, settings, deadline):
        logger.info("time budget spent during the VAE stage; run the same command again to resume")
        return False
    done = train_transformer(out, settings, deadline)
    if not done:
        logger.info("time budget spent during the transformer stage; run the same command again to resume")
    return done
