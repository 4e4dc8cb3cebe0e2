"""What decides whether a learned motion reaches new subjects: one recipe of the motion LoRA, trained
in-process with the project's `train_step`, then scored on new subjects and on the reference subjects.

    result = run_recipe(base, "zigzag", Recipe(rank=4, timesteps=(500, 1000)))

A `Recipe` varies what the probe asks about, one factor at a time: the training timesteps, the
caption (its family phrase, as the experiment; or a word no pretraining caption holds), the rank,
which temporal transformers get the LoRA, the spatial path and the appearance-debiased term. The
training is `MotionDirector_train.py`'s step (`utils.training.step.train_step`: the same losses,
adapters and update rule) in a plain loop with the toy config's optimiser settings, so that a probe
needs no config key the trainer lacks. Sampling and scores are the experiment's.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from utils.toy_world import world

logger = logging.getLogger(__name__)

TEMPORAL_LAYER_GROUPS = ("transformer_in", "down_blocks", "mid_block", "up_blocks")


@dataclass(frozen=True)
class Recipe:
    """How the motion LoRA is trained (the toy config's values by default)."""

    steps: int = 600
    rank: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    dropout: float = 0.1
    spatial: bool = True  # MotionDirector's spatial path; False: coupled tuning
    debias: bool = True  # the appearance-debiased term of the temporal loss
    timesteps: tuple[int, int] = (0, 1000)  # training timesteps are drawn from [low, high)
    temporal_layers: tuple[str, ...] = TEMPORAL_LAYER_GROUPS  # which temporal transformers get the LoRA
    # The temporal convs (kernel 3 over frames, zero-padded: the only layers that see frame order) in
    # the same parts get the temporal LoRA too. MotionDirector leaves them alone.
    temporal_convs: bool = False
    # "family": the clip's own caption; "new_word": "a <subject> zigzagging"; "random_subject": the
    # family caption with a random subject each step (whatever the clip shows), so that the LoRA
    # cannot key on the reference's subject words (not MotionDirector: a probe of what it keys on)
    caption: str = "family"
    mode: str = "single"
    seed: int = 0

    def prompt(self, shape: str, color: str, motion: str) -> str:
        if self.caption in ("family", "random_subject"):
            return world.caption(shape, color, motion)
        if self.caption == "new_word":
            return f"a {color} {shape} {world.NEW_WORD_PHRASE}"
        raise ValueError(f"unknown caption kind {self.caption!r}; use family, new_word or random_subject")


class TimestepRange:
    """A base whose training timesteps are drawn from [low, high) only; everything else is the base's."""

    def __init__(self, base, low: int, high: int):
        self.wrapped, self.low, self.high = base, low, high

    def __getattr__(self, name):
        return getattr(self.wrapped, name)

    def draw_timesteps(self, scheduler, batch: int, device) -> torch.Tensor:
        return torch.randint(self.low, self.high, (batch,), device=device)


def temporal_targets(components, groups: tuple[str, ...]) -> list[str]:
    """The temporal path's linears inside the named top-level parts of the UNet."""
    from models.lora import TEMPORAL

    return [name for name in components.lora_targets(TEMPORAL) if name.split(".")[0] in groups]


def temporal_conv_targets(components, groups: tuple[str, ...]) -> list[str]:
    """The Conv3d layers of the temporal convs (ZeroScope's `lora_layers` name `temp_convs`) inside
    the named top-level parts of the UNet."""
    from models.bases import zeroscope_layers
    from models.lora import TEMPORAL

    convs = zeroscope_layers.targets(components.denoiser, TEMPORAL, (zeroscope_layers.TEMPORAL_CONVS,))
    return [name for name in convs if name.split(".")[0] in groups]


def reference_latents(components, motion: str, mode: str) -> tuple[list[torch.Tensor], list[tuple[str, str]]]:
    """The reference clips' latents (1, C, F, h, w) each and their (shape, colour)."""
    from utils.evaluation.inputs import read_video
    from utils.toy_world.experiment import reference_clips, reference_subjects

    latents = []
    for clip in reference_clips(motion, mode):
        pixels = torch.from_numpy(read_video(clip)).permute(0, 3, 1, 2).float()[None] / 127.5 - 1
        with torch.no_grad():
            latents.append(components.encode_video(pixels))
    return latents, reference_subjects(motion, mode)


def train_recipe(base: Path, motion: str, recipe: Recipe):
    """The base's components with the recipe's adapters trained on the motion's reference clips;
    (components, spatial adapter names, the temporal loss over the last 100 steps)."""
    from models.bases import load_components
    from models.lora import SPATIAL, TEMPORAL, adapter_parameters, add_adapter, lora_layers, spatial_adapter_names
    from utils.training.step import Adapters, StepSettings, train_step

    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)  # train_step draws the spatial path's skips (and flips) with Python's random
    components = load_components(str(base))
    latents, subjects = reference_latents(components, motion, recipe.mode)
    texts = [components.encode_prompts([recipe.prompt(s, c, motion)]) for s, c in subjects]
    anyone = [(s, c) for c in world.COLORS for s in world.SHAPES]
    random_texts = components.encode_prompts([recipe.prompt(s, c, motion) for s, c in anyone])
    pick = torch.Generator().manual_seed(recipe.seed)
    denoiser = components.denoiser
    spatial = spatial_adapter_names(len(latents)) if recipe.spatial else []
    targets = temporal_targets(components, recipe.temporal_layers)
    if recipe.temporal_convs:
        targets += temporal_conv_targets(components, recipe.temporal_layers)
    add_adapter(denoiser, TEMPORAL, targets, recipe.rank, recipe.dropout)
    for name in spatial:
        add_adapter(denoiser, name, components.lora_targets(SPATIAL), recipe.rank, recipe.dropout)
    params = {name: adapter_parameters(denoiser, name) for name in [TEMPORAL, *spatial]}
    adapters = Adapters(spatial, params, lora_layers(denoiser), TEMPORAL)
    optimizers = {name: torch.optim.AdamW(p, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
                  for name, p in params.items()}
    trainer = replace(components, base=TimestepRange(components.base, *recipe.timesteps))
    settings = StepSettings(train_spatial=recipe.spatial, appearance_debias=recipe.debias)
    denoiser.train()
    losses = []
    for step in range(recipe.steps):
        clip = step % len(latents)
        text = texts[clip]
        if recipe.caption == "random_subject":
            index = int(torch.randint(len(anyone), (1,), generator=pick))
            text = random_texts[index : index + 1]
        losses.append(train_step(trainer, latents[clip], text, adapters, spatial[clip] if spatial else None,
                                 settings, backward=lambda loss: loss.backward(), autocast=contextlib.nullcontext).temporal)
        for name, optimizer in optimizers.items():
            if any(p.grad is not None for p in params[name]):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    denoiser.eval()
    return components, spatial, float(np.mean(losses[-100:]))


def sample_and_score(components, motion: str, subjects, recipe: Recipe, sampling) -> dict:
    """Trajectory distance, hit rate, appearance and leakage (the experiment's: a reference subject
    drawn instead of the prompt's) of `subjects` doing `motion` (the prompt as the recipe trained
    it), sampled with the adapters that are active now."""
    from utils.toy_world.experiment import CLOSE_ENOUGH, leaked, reference_subjects, sample_subjects
    from utils.toy_world.score import score_clip

    phrase = world.NEW_WORD_PHRASE if recipe.caption == "new_word" else None  # random_subject samples as family
    clips, _ = sample_subjects((components, None), motion, subjects, sampling, phrase=phrase)
    scores = [score_clip(clip, shape, color, motion) for (shape, color), _, clip in clips]
    distances = np.array([s.trajectory_distance for s in scores])
    references = reference_subjects(motion, recipe.mode)
    return {"distance": float(distances.mean()), "hit_rate": float((distances < CLOSE_ENOUGH).mean()),
            "appearance": float(np.mean([s.color_ok and s.shape_ok for s in scores])),
            "leakage": float(np.mean([leaked(s, subject, references) for s, (subject, _, _) in zip(scores, clips)])),
            "clips": len(scores)}


def layout_distance(components, motion: str, subjects, recipe: Recipe, guidance_scale: float = 4.0) -> float:
    """Mean over `subjects` of the trajectory distance between the target motion and the prompt's
    guided conditional layout at t = 999 (`evaluate.layouts_of`: where the first sampling step
    puts the subject, frame by frame, before any noise has chosen a member of the family)."""
    from utils.toy_world.evaluate import layouts_of
    from utils.toy_world.score import trajectory_distance

    prompts = [recipe.prompt(shape, color, motion) for shape, color in subjects]
    reference = world.offsets(motion)
    distances = []
    for centroids in layouts_of(components, prompts, guidance_scale=guidance_scale).values():
        track = np.concatenate([centroids, reference[:, 2:]], axis=1)  # the size is not read: the target's
        distances.append(trajectory_distance(track, reference))
    return float(np.mean(distances))


@torch.no_grad()
def lora_response(components, motion: str, subjects, recipe: Recipe, timesteps=(999, 800, 500)) -> dict:
    """How strongly the temporal LoRA acts on each subject: per timestep, the mean over `subjects`
    of ||prediction with it - without it|| on the subject's own clip doing the motion, noised at t
    (seeded noise, the recipe's prompt). A LoRA gated by its reference's appearance acts on the
    reference and barely on new subjects."""
    from models.lora import TEMPORAL, activate

    clips = np.stack([world.render(world.centered_spec(shape, color, motion)) for shape, color in subjects])
    pixels = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    latents = components.encode_video(pixels)
    text = components.encode_prompts([recipe.prompt(shape, color, motion) for shape, color in subjects])
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    response = {}
    for t in timesteps:
        steps = torch.full((len(latents),), t)
        noisy = components.scheduler.add_noise(latents, noise, steps)
        activate(components.denoiser, [TEMPORAL])
        with_lora = components.predict(noisy, steps, text)
        activate(components.denoiser, [])
        without = components.predict(noisy, steps, text)
        response[t] = float((with_lora - without).flatten(1).norm(dim=1).mean())
    activate(components.denoiser, [TEMPORAL])
    return response


def subject_responses(base: str | Path, runs, motion: str, subjects) -> dict[str, dict]:
    """Per subject ("green circle"), what each trained run's temporal LoRA does to it before any
    sampling: its response (`lora_response`, per timestep one value per run) and the first step's
    layout distance to the motion (`layout_distance`, one per run), beside the base's layout."""
    from utils.toy_world.experiment import sampling_model

    bare, _ = sampling_model(Path(base), None)
    found = {world.subject_name(shape, color):
             {"base_layout_px": layout_distance(bare, motion, [(shape, color)], Recipe()), "layout_px": [], "response": {}}
             for shape, color in subjects}
    for run in runs:
        components, _ = sampling_model(Path(base), Path(run))
        for shape, color in subjects:
            entry = found[world.subject_name(shape, color)]
            entry["layout_px"].append(layout_distance(components, motion, [(shape, color)], Recipe()))
            for t, value in lora_response(components, motion, [(shape, color)], Recipe()).items():
                entry["response"].setdefault(t, []).append(value)
    return found


def run_recipe(base: str | Path, motion: str, recipe: Recipe, sampling=None, subjects: int = 4) -> dict:
    """Train the recipe, then score new subjects and the reference subjects with the temporal LoRA
    alone (as MotionDirector samples), and the reference subjects with both paths."""
    from models.lora import TEMPORAL, activate
    from utils.toy_world.experiment import Sampling, new_subjects, reference_subjects

    sampling = sampling or Sampling(seeds=(0, 1), num_steps=20, subjects=subjects)
    started = time.time()
    components, spatial, final_loss = train_recipe(Path(base), motion, recipe)
    train_s = time.time() - started
    references = reference_subjects(motion, recipe.mode)
    subjects = new_subjects(references, sampling.subjects)
    activate(components.denoiser, [TEMPORAL])
    result = {"motion": motion, **asdict(recipe), "train_s": round(train_s, 1), "final_temporal_loss": final_loss,
              "new": sample_and_score(components, motion, subjects, recipe, sampling),
              "reference": sample_and_score(components, motion, references, recipe, sampling),
              "layout": {"new": layout_distance(components, motion, subjects, recipe),
                         "reference": layout_distance(components, motion, references, recipe)}}
    new_response = lora_response(components, motion, subjects, recipe)
    reference_response = lora_response(components, motion, references, recipe)
    result["lora_response"] = {"reference": reference_response,
                               "new_over_reference": {t: new_response[t] / reference_response[t] for t in new_response}}
    if spatial:  # what the two paths together do for the subject they were trained on
        activate(components.denoiser, [TEMPORAL, spatial[0]])
        result["reference_both_paths"] = sample_and_score(components, motion, references[:1], recipe, sampling)
    logger.info("%s %s: new %s, reference %s (%.0f s)", motion, recipe, result["new"], result["reference"], train_s)
    return result


def base_scores(base: str | Path, motion: str, recipe: Recipe = Recipe(), sampling=None, subjects: int = 4) -> dict:
    """The same scores for the base alone (no LoRA)."""
    from models.bases import load_components
    from utils.toy_world.experiment import Sampling, new_subjects, reference_subjects

    sampling = sampling or Sampling(seeds=(0, 1), num_steps=20, subjects=subjects)
    components = load_components(str(base))
    components.denoiser.eval()
    references = reference_subjects(motion, recipe.mode)
    subjects = new_subjects(references, sampling.subjects)
    return {"motion": motion, "row": "base", "caption": recipe.caption,
            "new": sample_and_score(components, motion, subjects, recipe, sampling),
            "reference": sample_and_score(components, motion, references, recipe, sampling),
            "layout": {"new": layout_distance(components, motion, subjects, recipe),
                       "reference": layout_distance(components, motion, references, recipe)}}


def one_factor_recipes(baseline: Recipe, variations: dict[str, list]) -> list[Recipe]:
    """The baseline, then each factor's values one at a time (the others at the baseline's)."""
    recipes = [baseline]
    for key, values in variations.items():
        recipes += [replace(baseline, **{key: value}) for value in values if value != getattr(baseline, key)]
    return recipes


def run_sweep(base: str | Path, out: str | Path, motions, recipes: list[Recipe], seeds, sampling=None) -> list[dict]:
    """Every recipe x motion x training seed (and the base per motion), appended to `out` (JSON
    lines); a result already there is not run again."""
    import json

    out = Path(out)
    done = [json.loads(line) for line in out.read_text(encoding="utf8").splitlines()] if out.is_file() else []

    def record(result):
        done.append(result)
        with out.open("a", encoding="utf8") as file:
            file.write(json.dumps(result) + "\n")

    for motion in motions:
        for caption in dict.fromkeys(r.caption for r in recipes):
            if not any(d.get("row") == "base" and d["motion"] == motion and d["caption"] == caption for d in done):
                record(base_scores(base, motion, Recipe(caption=caption), sampling))
        for recipe in recipes:
            for seed in seeds:
                wanted = {**json.loads(json.dumps(asdict(replace(recipe, seed=seed)))), "motion": motion}
                if any(all(d.get(k) == v for k, v in wanted.items()) for d in done):
                    continue
                record(run_recipe(base, motion, replace(recipe, seed=seed), sampling))
    return done
