"""Pretraining the toy world's base model from scratch, on a CPU: the VAE, then the UNet.

The UNet has three stages: binding (one subject's four straight directions), main (the v1 world:
straight lines) and vocabulary (v2: every caption's family of paths, `world.FAMILIES`). The v1 base
is the state after the main stage; `init_from` takes it from a pipeline folder instead of training
it again, and the vocabulary stage then starts from its (EMA) weights exactly as it would have.

The result is a ZeroScope-architecture pipeline folder in the diffusers layout (UNet3DCondition
Model, AutoencoderKL, CLIPTextModel + CLIPTokenizer, DDIM scheduler), loadable by every script
of the project. The text encoder stays frozen at its random initialisation: distinct prompts
still give distinct embeddings, which is all the UNet's cross-attention needs here.

Each stage is resumable: every `checkpoint_every` steps it saves its state to OUT/checkpoints/
and rewrites the pipeline folder, so a run stopped by its time budget (or killed) continues
where it stopped. The data of step k depends only on (seed, k), so a resumed run trains on the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError
from utils.toy_world import world
from utils.toy_world.base_parts import (
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
    caption_embeddings,
    clip_latents,
    diffusion_target,
    mark_complete,
    write_static_parts,
)
from utils.toy_world.evaluate import parse_caption

logger = logging.getLogger(__name__)

FOREGROUND_WEIGHT = 10.0


@dataclass
class StageSettings:
    """The settings both pretraining recipes share: this module's UNet base (`PretrainSettings`) and
    the DiT base (`pretrain_dit.DitSettings`)."""

    seed: int = 0
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    warmup_steps: int = 100
    ema_decay: float = 0.999
    clips_per_family_caption: int = 48  # vocabulary clips of each shape x colour x family
    uncond_prob: float = 0.1  # prompt dropout, for classifier-free guidance
    checkpoint_every: int = 100
    time_budget_s: float = math.inf  # stop (resumably) after this many seconds of this call


@dataclass
class PretrainSettings(StageSettings):
    vae_steps: int = 1500
    vae_batch: int = 16
    unet_steps: int = 2500
    unet_batch: int = 16
    unet_lr: float = 1e-3
    clips_per_combination: int = 16  # pretraining clips of each shape x colour x base motion
    start_spread: float | None = world.START_SPREAD  # pixels around the centred start (see world.START_SPREAD)
    # v-prediction: the loss weighs the clip's layout at high noise (where the prompt alone must
    # decide it) 1/alpha_bar times more than epsilon-prediction does (docs/toy_world.md).
    v_prediction: bool = False
    # Zero terminal SNR (Lin et al. 2023, implies v-prediction): at t = 999 no trace of the clip is left.
    # Without it a direction word's sign is never bound: the ZeroScope schedule's trace of the clip at
    # t = 999 already tells the direction (docs/toy_world.md). The shipped base uses it.
    zero_terminal_snr: bool = True
    # Binding stage, before the main stage: the fresh UNet first learns the direction words alone,
    # on the four centred directions of one subject at t >= 500 (`binding.word_specs("motion")`).
    # Binding a direction word is a saddle: on four clips the UNet leaves it after ~1000 steps, in
    # the full data not within 2500, where colour, shape and noise dominate the gradient (docs/toy_world.md
    # "Toy world", `binding`). 0 skips the stage.
    binding_steps: int = 2000
    binding_min_t: int = 500
    # Of each main batch, this many are centred clips of the BINDING_SUBJECTS (four directions and
    # still) at t >= binding_min_t: without them the main stage unbound the words again (gate 50%).
    rehearsal_per_batch: int = 4
    # Vocabulary stage (v2), after the main stage: every caption covers a family of paths (a random
    # `world.Member` per clip), from the main stage's EMA weights, a fresh optimizer and EMA, its
    # own warm-up and cosine learning rate. 0 skips it (the v1 base).
    vocabulary_steps: int = 0
    vocabulary_lr: float = 5e-4
    # Of each vocabulary batch, this many are rehearsal clips as in the main stage (0 in the shipped
    # recipe, whose main stage comes first). Without them a vocabulary stage straight after the
    # binding stage unbinds the direction words within 100 steps (docs/toy_world.md, Commands).
    vocabulary_rehearsal: int = 0
    # How many times more often a loop clip ("moving in a circle") is drawn than any other clip in
    # the vocabulary stage (1: uniform, as in the shipped base's first 3000 vocabulary steps; its loop
    # stage used 5). Loops are the family the base renders worst (docs/toy_world.md, "The gate").
    loop_weight: float = 1.0
    # A pipeline folder whose VAE, text encoder, tokenizer and UNet stand for the stages before
    # the vocabulary stage (e.g. models/toy_world_base, the v1 base: this recipe's main stage).
    init_from: str | None = None

    def __post_init__(self):
        if not 0 <= self.rehearsal_per_batch < self.unet_batch:
            raise ValueError(f"rehearsal_per_batch ({self.rehearsal_per_batch}) must be in [0, unet_batch = "
                             f"{self.unet_batch})")
        if not 0 <= self.vocabulary_rehearsal < self.unet_batch:
            raise UserError(f"--vocabulary-rehearsal must be in [0, {self.unet_batch}), not {self.vocabulary_rehearsal}")
        if not self.loop_weight > 0:
            raise UserError(f"--loop-weight must be above 0, not {self.loop_weight}")

    @property
    def vocabulary_start(self) -> int:
        return self.binding_steps + self.unet_steps

    @property
    def total_unet_steps(self) -> int:
        return self.vocabulary_start + self.vocabulary_steps

    @property
    def scheduler_config(self) -> dict:
        config = dict(SCHEDULER_CONFIG)
        if self.v_prediction or self.zero_terminal_snr:
            config["prediction_type"] = "v_prediction"
        if self.zero_terminal_snr:
            config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
        return config


# ----------------------------------------------------------------------------- shared loop pieces


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The RNG of one training step: a function of (seed, stage, step) only, so resuming is exact."""
    stages = {"vae": 17, "unet": 29, "binding": 31, "vocabulary": 37, "dit_vae": 41, "dit": 43}
    return torch.Generator().manual_seed(seed * 1_000_003 + stages[stage] * 100_003 + step)


def learning_rate(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous checkpoint intact


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, weights_only=True) if path.is_file() else None  # state dicts and numbers


# ----------------------------------------------------------------------------- VAE stage


def random_frames(gen: torch.Generator, count: int) -> torch.Tensor:
    """(count, 3, H, W) in [-1, 1]: random frames of random clips of every motion.

    The VAE sees the new motions' frames too (growing shapes reach other sizes); it learns
    appearance only, so this teaches the base model no motion.
    """
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    combos = world.all_combinations(world.BASE_MOTIONS + world.NEW_MOTIONS)
    frames = []
    for _ in range(count):
        spec = world.random_spec(rng, *combos[rng.integers(len(combos))])
        frames.append(world.render(spec)[rng.integers(world.FRAMES)])
    pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def vae_loss(vae, pixels: torch.Tensor, kl_weight: float, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """(loss, plain MSE) of frames (N, 3, H, W) or clips (N, 3, F, H, W) through `vae`."""
    posterior = vae.encode(pixels).latent_dist
    latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
    recon = vae.decode(latents).sample
    # the subject covers ~5% of a frame: weigh its pixels up, or the VAE first learns a grey frame
    # each frame's bottom row: no clock, no subject
    background = pixels[..., -1, :].median(dim=-1).values[..., None, None]
    subject = (pixels - background).abs().amax(dim=1, keepdim=True) > 0.1
    weight = 1.0 + (FOREGROUND_WEIGHT - 1.0) * subject.float()
    mse = torch.nn.functional.mse_loss(recon, pixels)
    weighted = ((recon - pixels) ** 2 * weight).mean() / weight.mean()
    return weighted + kl_weight * posterior.kl().mean(), mse.item()


def latent_scale(vae, seed: int, count: int = 256) -> float:
    """1 / std of the latents, so scaled latents have unit variance as the noise schedule expects."""
    with torch.no_grad():
        pixels = random_frames(torch.Generator().manual_seed(seed + 99), count)
        return float(1.0 / vae.encode(pixels).latent_dist.mean.std())


def train_vae(out: Path, settings: PretrainSettings, deadline: float) -> bool:
    """Train (or resume) the VAE; returns True when it has all its steps."""
    from diffusers import AutoencoderKL

    if (out / "vae" / "config.json").is_file():
        return True
    if settings.init_from:
        shutil.copytree(Path(settings.init_from) / "vae", out / "vae")
        return True
    ckpt_path = out / "checkpoints" / "vae.pt"
    torch.manual_seed(settings.seed + 2)
    vae = AutoencoderKL(**VAE_CONFIG, scaling_factor=1.0)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    step = 0
    if (ckpt := load_checkpoint(ckpt_path)) is not None:
        vae.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
    vae.train()
    started, recent = time.time(), []
    while step < settings.vae_steps and time.time() < deadline:
        gen = step_generator(settings.seed, "vae", step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings.vae_lr, settings.warmup_steps, settings.vae_steps)
        loss, mse = vae_loss(vae, random_frames(gen, settings.vae_batch), settings.kl_weight, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        recent.append(mse)
        if step % settings.checkpoint_every == 0 or step == settings.vae_steps:
            logger.info("vae step %d/%d  mse %.5f  (%.2f s/step)", step, settings.vae_steps,
                        float(np.mean(recent)), (time.time() - started) / len(recent))
            save_checkpoint(ckpt_path, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step})
    save_checkpoint(ckpt_path, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step})
    if step < settings.vae_steps:
        return False
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scale(vae, settings.seed))
    vae.save_pretrained(out / "vae", safe_serialization=True)
    logger.info("vae done: scaling_factor %.4f", vae.config.scaling_factor)
    return True


# ----------------------------------------------------------------------------- UNet stage


def encode_clips(cache: Path, vae_dir: Path, specs: list) -> dict:
    """Scaled VAE latents (N, 4, F, 8, 8) and caption index of the clips of `specs`, cached in `cache`."""
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    captions = sorted({s.caption for s in specs})
    latents = [clip_latents(vae, specs[chunk:chunk + 16]) for chunk in range(0, len(specs), 16)]
    data = {"latents": torch.cat(latents), "captions": captions,
            "caption_index": torch.tensor([captions.index(s.caption) for s in specs])}
    save_checkpoint(cache, data)
    logger.info("encoded %d clips (%d captions) into %s", len(specs), len(captions), cache.name)
    return data


def encode_dataset(out: Path, settings: PretrainSettings) -> dict:
    """The main stage's clips (straight paths), encoded once."""
    specs = world.sample_specs(settings.clips_per_combination, settings.seed + 1, spread=settings.start_spread)
    return encode_clips(out / "checkpoints" / "latents.pt", out / "vae", specs)


def encode_family_dataset(out: Path, settings: PretrainSettings) -> dict:
    """The vocabulary stage's clips (a random member of its caption's family each), encoded once."""
    specs = world.family_specs(settings.clips_per_family_caption, settings.seed + 5, settings.start_spread)
    return encode_clips(out / "checkpoints" / "family_latents.pt", out / "vae", specs)


def unet_loss(unet, scheduler, latents, context, gen: torch.Generator,
              min_t: int | torch.Tensor = 0) -> torch.Tensor:
    """The diffusion loss at random timesteps, each clip's drawn from [its min_t, T)."""
    noise = torch.randn(latents.shape, generator=gen)
    low = torch.as_tensor(min_t).expand(latents.shape[0])
    span = scheduler.config.num_train_timesteps - low
    timesteps = low + (torch.rand(latents.shape[0], generator=gen) * span).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states=context).sample
    return torch.nn.functional.mse_loss(pred, diffusion_target(scheduler, latents, noise, timesteps))


def unet_batch(data: dict, embeddings: torch.Tensor, count: int, uncond_prob: float, gen: torch.Generator,
               weights: torch.Tensor | None = None):
    """`count` latents and caption states of random clips (uniform, or drawn by `weights` per clip),
    some with the empty prompt."""
    if weights is None:
        index = torch.randint(0, len(data["latents"]), (count,), generator=gen)
    else:
        index = torch.multinomial(weights, count, replacement=True, generator=gen)
    caption = data["caption_index"][index]
    dropped = torch.rand(count, generator=gen) < uncond_prob
    caption = torch.where(dropped, torch.full_like(caption, len(embeddings) - 1), caption)
    return data["latents"][index], embeddings[caption]


def save_unet(out: Path, unet, ema_state: dict) -> None:
    """Write the EMA weights as the pipeline's UNet."""
    live = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.load_state_dict(ema_state)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    unet.load_state_dict(live)


# The binding stage's subject, then the subjects whose centred clips the main stage rehearses.
BINDING_SUBJECTS = (("circle", "red"), ("square", "blue"), ("triangle", "yellow"))
DIRECTIONS = ("left", "right", "up", "down")


def centred_clips(out: Path, subjects, motions) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and caption states of the centred clips of every subject x motion."""
    from utils.toy_world.binding import encode_clips

    specs = [world.centered_spec(shape, color, m) for shape, color in subjects for m in motions]
    return encode_clips(out, specs)


def new_optimizer(unet, settings: PretrainSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=1e-2)


def initial_unet(out: Path, settings: PretrainSettings):
    """(UNet, optimizer, EMA state, step): from the checkpoint, from `init_from` (at the start of
    the vocabulary stage), or fresh."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(settings.seed)
    unet = UNet3DConditionModel(**UNET_CONFIG)
    optimizer = new_optimizer(unet, settings)
    step = 0
    if (ckpt := load_checkpoint(out / "checkpoints" / "unet.pt")) is not None:
        unet.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        return unet, optimizer, ckpt["ema"], ckpt["step"]
    if settings.init_from:  # its weights into the fresh UNet: the saved config names no source path
        unet.load_state_dict(UNet3DConditionModel.from_pretrained(Path(settings.init_from) / "unet").state_dict())
        step = settings.vocabulary_start
    return unet, optimizer, {k: v.detach().clone() for k, v in unet.state_dict().items()}, step


def train_unet(out: Path, settings: PretrainSettings, deadline: float) -> bool:
    """Train (or resume) the UNet: the binding stage, the main stage on every encoded clip, then
    the vocabulary stage. Returns True when it has all its steps."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(settings.scheduler_config)
    unet, optimizer, ema, step = initial_unet(out, settings)
    unet.train()
    rehearsal = centred_clips(out, BINDING_SUBJECTS, DIRECTIONS + ("still",))
    # the binding clips are the first subject's four directions, the first four rehearsal clips
    binding = tuple(part[: len(DIRECTIONS)] for part in rehearsal)
    main = vocabulary = None
    started, recent = time.time(), []

    def checkpoint():
        save_checkpoint(out / "checkpoints" / "unet.pt", {"model": unet.state_dict(), "optimizer": optimizer.state_dict(),
                                                          "ema": ema, "step": step})
        save_unet(out, unet, ema)
        mark_complete(out)

    total = settings.total_unet_steps
    while step < total and time.time() < deadline:
        if step == settings.binding_steps > 0:  # the main stage starts afresh from the bound UNet
            optimizer = new_optimizer(unet, settings)
            ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        if step == settings.vocabulary_start:  # from the main stage's product: its EMA weights
            unet.load_state_dict(ema)
            optimizer = new_optimizer(unet, settings)
        if step < settings.binding_steps:
            loss = binding_step(unet, optimizer, scheduler, binding, settings, step)
        elif step < settings.vocabulary_start:
            main = main or stage_data(out, settings, encode_dataset)
            loss = main_step(unet, optimizer, scheduler, *main, rehearsal, settings, step - settings.binding_steps)
            update_ema(ema, unet, step - settings.binding_steps, settings.ema_decay)
        else:
            vocabulary = vocabulary or vocabulary_data(out, settings)
            loss = vocabulary_step(unet, optimizer, scheduler, *vocabulary, rehearsal, settings,
                                   step - settings.vocabulary_start)
            update_ema(ema, unet, step - settings.vocabulary_start, settings.ema_decay)
        step += 1
        recent.append(loss)
        if step % settings.checkpoint_every == 0 or step in (settings.binding_steps, settings.vocabulary_start, total):
            logger.info("unet step %d/%d  loss %.4f  (%.2f s/step)%s", step, total,
                        float(np.mean(recent[-settings.checkpoint_every:])), (time.time() - started) / len(recent),
                        binding_report(unet, scheduler, binding))
            checkpoint()
    checkpoint()
    return step >= total


def stage_data(out: Path, settings: PretrainSettings, encode) -> tuple[dict, torch.Tensor]:
    """A stage's encoded clips and the caption states of their captions (+ the empty prompt)."""
    data = encode(out, settings)
    return data, caption_embeddings(out, data["captions"])


def binding_step(unet, optimizer, scheduler, clips, settings: PretrainSettings, step: int) -> float:
    """One step on all the binding clips at once, t >= binding_min_t, a constant learning rate."""
    gen = step_generator(settings.seed, "binding", step)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # dropout in temp_convs
    for group in optimizer.param_groups:
        group["lr"] = settings.unet_lr
    loss = unet_loss(unet, scheduler, *clips, gen, settings.binding_min_t)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def binding_report(unet, scheduler, clips) -> str:
    """The four direction words' swap ratio at t = 800 (1.0: not bound; the axis alone raises it,
    see `binding`)."""
    from utils.toy_world.binding import swap_ratio

    unet.eval()
    ratio = swap_ratio(unet, scheduler, *clips, 800, repeats=2)
    unet.train()
    return f"  direction swap ratio {ratio:.3f}"


def main_step(unet, optimizer, scheduler, data, embeddings, rehearsal, settings: PretrainSettings,
              step: int) -> float:
    """One step on random clips plus `rehearsal_per_batch` centred binding-subject clips at
    t >= binding_min_t; warm-up and cosine learning rate, clipped gradient."""
    gen = step_generator(settings.seed, "unet", step)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # dropout in temp_convs
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, settings.unet_lr, settings.warmup_steps, settings.unet_steps)
    count = settings.rehearsal_per_batch
    latents, context = unet_batch(data, embeddings, settings.unet_batch - count, settings.uncond_prob, gen)
    latents, context, min_t = with_rehearsal(latents, context, rehearsal, count, settings, gen)
    loss = unet_loss(unet, scheduler, latents, context, gen, min_t)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def with_rehearsal(latents, context, rehearsal, count: int, settings: PretrainSettings, gen: torch.Generator):
    """(latents, context, min_t): the batch plus `count` random rehearsal clips, which alone train
    at t >= binding_min_t (where the direction words are bound)."""
    pick = torch.randint(0, len(rehearsal[0]), (count,), generator=gen)
    latents, context = torch.cat([latents, rehearsal[0][pick]]), torch.cat([context, rehearsal[1][pick]])
    min_t = torch.tensor([0] * (len(latents) - count) + [settings.binding_min_t] * count)
    return latents, context, min_t


def vocabulary_data(out: Path, settings: PretrainSettings) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """The vocabulary stage's clips, caption states and per-clip draw weights (fixed for the stage)."""
    data, embeddings = stage_data(out, settings, encode_family_dataset)
    return data, embeddings, loop_weights(data, settings.loop_weight)


def vocabulary_step(unet, optimizer, scheduler, data, embeddings, weights, rehearsal, settings: PretrainSettings,
                    step: int) -> float:
    """One step on random family clips (drawn by `weights`, None: uniformly) plus
    `vocabulary_rehearsal` rehearsal clips; warm-up and cosine learning rate from `vocabulary_lr`."""
    gen = step_generator(settings.seed, "vocabulary", step)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # dropout in temp_convs
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, settings.vocabulary_lr, settings.warmup_steps, settings.vocabulary_steps)
    count = settings.vocabulary_rehearsal
    latents, context = unet_batch(data, embeddings, settings.unet_batch - count, settings.uncond_prob, gen, weights)
    min_t = 0
    if count:  # (without them the draws stay those of the shipped recipe)
        latents, context, min_t = with_rehearsal(latents, context, rehearsal, count, settings, gen)
    loss = unet_loss(unet, scheduler, latents, context, gen, min_t)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def loop_weights(data: dict, loop_weight: float) -> torch.Tensor | None:
    """Per-clip draw weights: `loop_weight` for loop clips, 1 for the others (None when uniform)."""
    if loop_weight == 1.0:
        return None
    is_loop = torch.tensor([parse_caption(c)[2] == "loop" for c in data["captions"]])[data["caption_index"]]
    return torch.where(is_loop, loop_weight, 1.0)


@torch.no_grad()
def update_ema(ema: dict, unet, step: int, decay: float) -> None:
    # EMA warms up (decay grows with the step) so early weights do not dominate a short run
    decay = min(decay, (2 + step) / (11 + step))
    for name, value in unet.state_dict().items():
        if value.is_floating_point():
            ema[name].mul_(decay).add_(value, alpha=1 - decay)
        else:
            ema[name].copy_(value)


def copy_text_parts(source: Path, out: Path, scheduler_config: dict) -> None:
    """Tokenizer and text encoder of the `init_from` base (its schedule must be this run's)."""
    theirs = json.loads((source / "scheduler" / "scheduler_config.json").read_text(encoding="utf8"))
    differing = sorted(k for k, v in scheduler_config.items() if theirs.get(k) != v)
    if differing:
        raise UserError(f"--init-from {source}: its scheduler differs from this run's in {differing}; "
                        "pass the schedule options it was pretrained with")
    for part in ("tokenizer", "text_encoder"):
        if not (out / part).is_dir():
            shutil.copytree(source / part, out / part)


def pretrain(out_dir: str | Path, settings: PretrainSettings) -> bool:
    """Run (or resume) both stages into `out_dir`; returns True when both are complete."""
    out = Path(out_dir)
    deadline = time.time() + settings.time_budget_s
    if settings.init_from:
        copy_text_parts(Path(settings.init_from), out, settings.scheduler_config)
    write_static_parts(out, settings.seed, settings.scheduler_config)
    if not train_vae(out, settings, deadline):
        logger.info("time budget spent during the VAE stage; run the same command again to resume")
        return False
    done = train_unet(out, settings, deadline)
    if not done:
        logger.info("time budget spent during the UNet stage; run the same command again to resume")
    return done
