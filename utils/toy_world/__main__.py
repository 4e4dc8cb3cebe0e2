"""python -m utils.toy_world {make-data,pretrain,sample,score,probe,layout,binding,compare,vae-roundtrip,experiment,table} ...: see --help of each command."""

from __future__ import annotations

import argparse
import logging
import math
import sys

import torch


def _make_data(args) -> None:
    from utils.toy_world import world

    if args.reference:
        subjects = [_subject(text) for text in args.reference_subjects] or world.REFERENCE_SUBJECTS
        paths = world.write_reference_clips(args.out_dir, args.frames, subjects)
        logging.getLogger(__name__).info("wrote %d reference clips to %s", len(paths), args.out_dir)
        return
    motions = world.NEW_MOTIONS if args.new else world.BASE_MOTIONS
    specs = world.sample_specs(args.per_combination, args.seed, motions)
    for spec in specs:
        world.write_clip(spec, args.out_dir, frames=args.frames)
    logging.getLogger(__name__).info("wrote %d clips (+ captions) to %s", len(specs), args.out_dir)


def _subject(text: str) -> tuple[str, str]:
    """("triangle", "red") from "triangle:red"."""
    from utils.errors import UserError
    from utils.toy_world import world

    shape, _, color = text.partition(":")
    if shape not in world.SHAPES or color not in world.COLORS:
        raise UserError(f"bad subject {text!r}; write SHAPE:COLOUR with a shape of {list(world.SHAPES)} "
                        f"and a colour of {list(world.COLORS)}, e.g. triangle:red")
    return shape, color


def _pretrain(args) -> None:
    from utils.toy_world.pretrain import PretrainSettings, pretrain

    from utils.toy_world.world import START_SPREAD

    torch.set_num_threads(args.threads)
    spread = START_SPREAD if args.start_spread is None else (None if args.start_spread < 0 else args.start_spread)
    settings = PretrainSettings(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                                time_budget_s=args.time_budget * 60 if args.time_budget else math.inf,
                                zero_terminal_snr=args.zero_terminal_snr, v_prediction=args.v_prediction,
                                start_spread=spread, binding_steps=args.binding_steps,
                                vocabulary_steps=args.vocabulary_steps, init_from=args.init_from,
                                vocabulary_lr=args.vocabulary_lr, loop_weight=args.loop_weight,
                                vocabulary_rehearsal=args.vocabulary_rehearsal)
    done = pretrain(args.out_dir, settings)
    sys.exit(0 if done else 3)


def _pretrain_dit(args) -> None:
    from utils.toy_world.pretrain_dit import DitSettings, pretrain_dit

    torch.set_num_threads(args.threads)
    settings = DitSettings(seed=args.seed, vae_steps=args.vae_steps, steps=args.steps,
                           vae_temporal_factor=args.vae_temporal_factor,
                           time_budget_s=args.time_budget * 60 if args.time_budget else math.inf)
    sys.exit(0 if pretrain_dit(args.out_dir, settings) else 3)


def _sample(args) -> None:
    import json
    from pathlib import Path

    from utils.toy_world import world
    from utils.toy_world.evaluate import evaluate, parse_caption, rendered_spread

    torch.set_num_threads(args.threads)
    if args.prompt:
        combos = [parse_caption(p) for p in args.prompt]
    else:
        combos = world.all_combinations(world.BASE_MOTIONS if args.straight else world.FAMILIES)
    report = evaluate(args.model, combos, args.samples, args.steps, args.guidance_scale,
                      video_dir=args.out_dir)
    report["summary"]["rendered_spread"] = rendered_spread(frames=report["summary"]["frames"])
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "scores.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf8")
    print(json.dumps(report["summary"], indent=1))


def _score(args) -> None:
    import json
    from pathlib import Path

    from utils.toy_world.evaluate import parse_caption
    from utils.toy_world.score import score_clip, summarize
    from utils.io.video_io import read_frames, video_info

    scores = []
    for path in args.videos:
        shape, color, motion = parse_caption(args.caption or Path(path).with_suffix(".txt").read_text(encoding="utf8"))
        frames = read_frames(path, range(video_info(path).num_frames))
        scores.append(score_clip(frames, shape, color, motion))
        print(path, json.dumps(scores[-1].as_dict()))
    print(json.dumps(summarize(scores), indent=1))


def _experiment(args) -> None:
    from pathlib import Path

    import imageio.v3 as iio

    from utils.toy_world.experiment import Sampling, frame_strips, run_experiment, setup_for
    from utils.toy_world.table import write_tables

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    sampling = Sampling(seeds=tuple(range(args.sample_seeds)), subjects=args.subjects)
    setup = setup_for(args.model, args.reference_root)
    rows = run_experiment(args.model, out, args.motion, args.modes, args.train_seeds, args.steps, sampling,
                          args.variants, overrides=tuple(args.set), lora_scales=tuple(args.lora_scales), setup=setup)
    out.mkdir(parents=True, exist_ok=True)
    print(write_tables([{k: v for k, v in r.items() if k != "samples"} for r in rows], out / "table.json"))
    for motion in args.motion:
        iio.imwrite(out / f"strips_{motion}.png", frame_strips(rows, motion, mode=args.modes[0], setup=setup))


def _table(args) -> None:
    import json
    from pathlib import Path

    from utils.toy_world.table import all_differences, by_subject, label_rows, summarize_rows, tables_text, write_tables

    rows = []
    for name in args.tables:
        path, _, label = name.partition("@")
        text = Path(path).read_text(encoding="utf8")
        read = [json.loads(line) for line in text.splitlines()] if path.endswith(".jsonl") else json.loads(text)["rows"]
        rows += label_rows(read, label) if label else read
    if args.motion:
        rows = [r for r in rows if r["motion"] in args.motion]
    if args.out:
        print(write_tables(rows, args.out))
        return
    print(tables_text(summarize_rows(rows), all_differences(rows), by_subject(rows)))


def _compare(args) -> None:
    from utils.toy_world.compare import compare_videos

    scores = compare_videos(args.reference, args.prompt, args.base, args.motiondirector, args.out_dir, args.motion,
                            args.strip_pairs)
    for name in ("base", "motiondirector"):
        s = scores[name]
        print(f"{name:>14}: motion fidelity {s['motion_fidelity']:6.1f}  trajectory distance "
              f"{s['trajectory_distance_px']:5.1f} px  appearance {s['appearance_accuracy']:.1f}  ({s['video']})")
    if "summary" in scores:
        summary = scores["summary"]
        print(f"over {summary['n_videos']} videos each ({summary['motion']}):")
        for name in ("base", "motiondirector"):
            s = summary[name]
            print(f"{name:>14}: hit rate {s['hit_rate']:.2f}  trajectory distance {s['trajectory_distance_px']:5.1f} px  "
                  f"motion fidelity {s['motion_fidelity']:6.1f}  appearance {s['appearance_accuracy']:.2f}")
    print(f"wrote {args.out_dir}/scores.json and {args.out_dir}/strip.png")


def _vae_round_trip(args) -> None:
    from utils.toy_world.compare import vae_round_trip
    from utils.toy_world.experiment import reference_clips, setup_for

    torch.set_num_threads(args.threads)
    # a target's reference clip is captioned with its family ("moving right" for the zig-zag)
    clips = [(clip, args.motion) for clip in args.clips] or [
        (clip, motion) for motion in ("bouncing", "circling", "growing", "zigzag")
        for clip in reference_clips(motion, "single", setup_for(args.model))]
    for row in vae_round_trip(args.model, clips, args.seed):
        print(f"{row['motion']:>9}: trajectory distance {row['file_px']:5.2f} px as written, "
              f"{row['round_trip_px']:5.2f} px after the VAE, read as {row['read_after']}, half-width "
              f"{' -> '.join('-' if s is None else f'{s:.1f}' for s in row['size_px'])} px  ({row['clip']})")
        print(f"{'':>9}  centre shift per frame (px): {' '.join('-' if s is None else str(s) for s in row['frame_px'])}")


def _layout(args) -> None:
    from utils.toy_world.evaluate import conditional_layout

    torch.set_num_threads(args.threads)
    prompts = args.prompt or [f"a red circle moving {d}" for d in ("left", "right", "up", "down")]
    for prompt, centroids in conditional_layout(args.model, prompts, args.timestep, args.seeds, args.guidance_scale).items():
        print(f"{prompt}\n  x {' '.join(f'{v:5.1f}' for v in centroids[:, 0])}\n  y {' '.join(f'{v:5.1f}' for v in centroids[:, 1])}")


def _probe(args) -> None:
    import json

    from utils.toy_world.evaluate import caption_reliance, order_use

    torch.set_num_threads(args.threads)
    print(json.dumps({"caption_reliance": caption_reliance(args.model), "order_use": order_use(args.model)}, indent=1))


def _recipe_value(key: str, text: str):
    """A Recipe field's value from the command line: "500:1000" for timesteps, "up_blocks+mid_block"
    for temporal_layers, true/false for the flags."""
    from utils.errors import UserError
    from utils.toy_world.transfer import TEMPORAL_LAYER_GROUPS, Recipe

    if not hasattr(Recipe(), key):
        raise UserError(f"unknown recipe key {key!r}; use one of {sorted(Recipe.__dataclass_fields__)}")
    kind = type(getattr(Recipe(), key))
    if key == "timesteps":
        low, high = text.split(":")
        return int(low), int(high)
    if key == "temporal_layers":
        groups = tuple(text.split("+"))
        unknown = set(groups) - set(TEMPORAL_LAYER_GROUPS)
        if unknown:
            raise UserError(f"unknown temporal layer groups {sorted(unknown)}; use {'+'.join(TEMPORAL_LAYER_GROUPS)}")
        return groups
    if kind is bool:
        return text.lower() in ("1", "true", "yes")
    return kind(text)


def _transfer(args) -> None:
    from utils.toy_world.experiment import Sampling
    from utils.toy_world.transfer import Recipe, one_factor_recipes, run_sweep

    torch.set_num_threads(args.threads)
    baseline = Recipe(**{key: _recipe_value(key, value) for key, value in (item.split("=", 1) for item in args.set)})
    variations = {}
    for item in args.vary:
        key, values = item.split("=", 1)
        variations[key] = [_recipe_value(key, v) for v in values.split(",")]
    sampling = Sampling(seeds=tuple(range(args.sample_seeds)), num_steps=args.num_steps, subjects=args.subjects)
    results = run_sweep(args.model, args.out, args.motion, one_factor_recipes(baseline, variations), args.train_seeds,
                        sampling)
    print(f"{len(results)} results in {args.out}")


def _response(args) -> None:
    import json
    from pathlib import Path

    import numpy as np

    from utils.toy_world import world
    from utils.toy_world.experiment import new_subjects, reference_subjects, setup_for
    from utils.toy_world.transfer import subject_responses

    torch.set_num_threads(args.threads)
    references = reference_subjects(args.motion, "single", setup_for(args.model, args.reference_root))
    found = subject_responses(args.model, args.runs, args.motion, references + new_subjects(references, args.subjects))
    reference = np.array(found[world.subject_name(*references[0])]["response"][999])
    print(f"{'subject':<16} {'response t=999':>15} {'/ reference':>12} {'layout px':>10} {'base layout px':>15}")
    for subject, entry in found.items():
        response = np.array(entry["response"][999])
        ratio = (response / reference).mean() if reference.all() else float("nan")  # an untrained LoRA: 0 / 0
        print(f"{subject:<16} {response.mean():9.2f} ± {response.std(ddof=1) if len(response) > 1 else 0:4.2f} "
              f"{ratio:12.2f} {np.mean(entry['layout_px']):10.2f} {entry['base_layout_px']:15.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(found, indent=1), encoding="utf8")


def _binding(args) -> None:
    import json

    from utils.toy_world.binding import binding

    torch.set_num_threads(args.threads)
    history = binding(args.model, args.word, args.steps, args.every, seed=args.seed)
    print(json.dumps(history, indent=1))


def build_parser() -> argparse.ArgumentParser:
    from utils.toy_world.experiment import DEFAULT_MOTIONS, MODES, VARIANTS
    from utils.toy_world.world import NEW_MOTIONS

    parser = argparse.ArgumentParser(prog="python -m utils.toy_world", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-data", help="write world clips (mp4 + same-named .txt caption)")
    make.add_argument("out_dir", help="folder to write the clips into")
    make.add_argument("--per-combination", type=int, default=1, help="clips per shape x colour x motion")
    make.add_argument("--seed", type=int, default=0, help="seed of the start points")
    make.add_argument("--frames", type=int, default=8, help="frames per clip (default 8; the DiT base: 9)")
    make.add_argument("--new", action="store_true", help="the new motions instead of the base ones")
    make.add_argument("--reference", action="store_true",
                      help="the new motions' reference clips (<motion>/single/, <motion>/multi/) instead")
    make.add_argument("--reference-subjects", nargs="+", default=[], metavar="SHAPE:COLOUR",
                      help="with --reference: the subjects, the first one also the single clip's "
                           "(default: square:blue circle:yellow triangle:red, the bundled clips')")
    make.set_defaults(run=_make_data)

    pre = commands.add_parser("pretrain", help="pretrain the base pipeline (resumable)")
    pre.add_argument("out_dir", help="pipeline folder to write (and resume from)")
    pre.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")
    pre.add_argument("--vae-steps", type=int, default=1500, help="VAE training steps (default 1500)")
    pre.add_argument("--unet-steps", type=int, default=2500, help="UNet training steps (default 2500)")
    pre.add_argument("--binding-steps", type=int, default=2000,
                     help="UNet steps on one subject's four directions at t >= 500 before the main steps, "
                          "to bind the direction words (default 2000; 0 skips)")
    pre.add_argument("--vocabulary-steps", type=int, default=2000,
                     help="UNet steps on every caption's family of paths after the main steps (v2; default 2000; "
                          "0: the v1 base, straight lines only)")
    pre.add_argument("--vocabulary-lr", type=float, default=5e-4, help="the vocabulary stage's peak learning rate "
                     "(default 5e-4)")
    pre.add_argument("--vocabulary-rehearsal", type=int, default=0,
                     help="of each vocabulary batch of 16, this many centred straight clips of the binding subjects at "
                          "t >= 500, as the main stage has (default 0; needed when --unet-steps is 0)")
    pre.add_argument("--loop-weight", type=float, default=1.0,
                     help="draw loop clips this many times as often as others in the vocabulary stage (default 1)")
    pre.add_argument("--init-from", default=None, metavar="BASE",
                     help="take the VAE, text encoder and the UNet after the main stage from this pipeline "
                          "folder (e.g. models/toy_world_base, the v1 base) and run only the vocabulary stage")
    pre.add_argument("--time-budget", type=float, default=None,
                     help="stop after this many minutes (resumable: run again to continue)")
    pre.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    pre.add_argument("--zero-terminal-snr", action=argparse.BooleanOptionalAction, default=True,
                     help="rescale the betas to zero terminal SNR and predict v (default; --no-zero-terminal-snr "
                          "keeps ZeroScope's schedule, under which the direction words' sign is not learned)")
    pre.add_argument("--v-prediction", action="store_true",
                     help="with --no-zero-terminal-snr: predict v instead of the noise")
    pre.add_argument("--start-spread", type=float, default=None,
                     help="pretraining clips start within this many pixels of the centred start "
                          "(default: world.START_SPREAD; a negative value: anywhere)")
    pre.set_defaults(run=_pretrain)

    dit = commands.add_parser("pretrain-dit", help="pretrain a tiny Wan 2.1-architecture base (9-frame clips; resumable)")
    dit.add_argument("out_dir", help="pipeline folder to write (and resume from; checkpoints/ inside)")
    dit.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")
    dit.add_argument("--vae-steps", type=int, default=900, help="VAE training steps (default 900)")
    dit.add_argument("--steps", type=int, default=5000, help="transformer training steps (default 5000)")
    dit.add_argument("--vae-temporal-factor", type=int, default=2, choices=(2, 4),
                     help="the VAE's time compression (default 2, the shipped base's; 4 is Wan 2.1's)")
    dit.add_argument("--time-budget", type=float, default=None, help="minutes; stop resumably after them")
    dit.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    dit.set_defaults(run=_pretrain_dit)

    sample = commands.add_parser("sample", help="sample world prompts with the project's sampler and score them")
    sample.add_argument("model", help="pipeline folder (e.g. models/toy_world_base)")
    sample.add_argument("out_dir", help="folder for the clips and scores.json")
    sample.add_argument("--prompt", action="append",
                        help="a world caption (repeatable; default: every shape x colour x family, 72 prompts)")
    sample.add_argument("--straight", action="store_true",
                        help="by default, the v1 gate's 60 prompts instead (left, right, up, down, still)")
    sample.add_argument("--samples", type=int, default=2, help="clips per prompt (default 2)")
    sample.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    sample.add_argument("--guidance-scale", type=float, default=4.0, help="classifier-free guidance (default 4)")
    sample.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    sample.set_defaults(run=_sample)

    score = commands.add_parser("score", help="score clips against their captions with the detector")
    score.add_argument("videos", nargs="+", help="mp4 files (caption: the same-named .txt unless --caption)")
    score.add_argument("--caption", default=None, help="the caption to score every video against")
    score.set_defaults(run=_score)

    probe = commands.add_parser("probe", help="loss ratio when the caption's motion/colour/shape word is swapped; frame-order use")
    probe.add_argument("model", help="pipeline folder")
    probe.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    probe.set_defaults(run=_probe)

    lay = commands.add_parser("layout", help="per-frame subject centroid of each prompt's predicted clean clip from pure noise")
    lay.add_argument("model", help="pipeline folder")
    lay.add_argument("--prompt", action="append", help="a world caption (repeatable; default: a red circle's four directions)")
    lay.add_argument("--timestep", type=int, default=999, help="the noise level (default 999, where sampling starts)")
    lay.add_argument("--seeds", type=int, default=8, help="noise draws averaged (default 8)")
    lay.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (default 1: the conditional mean)")
    lay.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    lay.set_defaults(run=_layout)

    bind = commands.add_parser("binding", help="how fast a fresh UNet learns to use one caption word (swap ratio)")
    bind.add_argument("model", help="pipeline folder (its VAE, text encoder and scheduler are used)")
    bind.add_argument("--word", default="motion", choices=["motion", "sign", "color", "shape"], help="the word that varies")
    bind.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    bind.add_argument("--every", type=int, default=100, help="probe every this many steps (default 100)")
    bind.add_argument("--seed", type=int, default=0, help="seed of the fresh UNet (default 0)")
    bind.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    bind.set_defaults(run=_binding)

    tr = commands.add_parser("transfer", help="what decides whether a learned motion reaches new subjects: "
                                              "one factor of the LoRA recipe at a time (JSON lines)")
    tr.add_argument("model", help="the base pipeline folder")
    tr.add_argument("out", help="JSON-lines file the results are appended to (finished ones are skipped)")
    tr.add_argument("--motion", nargs="+", default=["zigzag", "circling"], choices=NEW_MOTIONS,
                    help="target motions (default: zigzag circling)")
    tr.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="the baseline recipe (utils.toy_world.transfer.Recipe fields), e.g. rank=4 timesteps=500:1000 "
                         "temporal_layers=mid_block+up_blocks caption=new_word spatial=false mode=multi")
    tr.add_argument("--vary", nargs="+", default=[], metavar="KEY=V1,V2",
                    help="factors varied one at a time around the baseline, e.g. rank=2,32 timesteps=500:1000,0:500")
    tr.add_argument("--train-seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    tr.add_argument("--subjects", type=int, default=4, help="new subjects (default 4)")
    tr.add_argument("--sample-seeds", type=int, default=2, help="samples per subject (default 2)")
    tr.add_argument("--num-steps", type=int, default=20, help="DDIM steps (default 20)")
    tr.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    tr.set_defaults(run=_transfer)

    resp = commands.add_parser("response", help="per subject, what trained runs' temporal LoRAs do before sampling: "
                                                "their response at t = 999/800/500 and the first step's layout")
    resp.add_argument("model", help="the base pipeline folder the runs were trained on")
    resp.add_argument("runs", nargs="+", help="training run folders (each with temporal/lora/)")
    resp.add_argument("--motion", required=True, choices=NEW_MOTIONS, help="the motion the runs learned")
    resp.add_argument("--subjects", type=int, default=4, help="new subjects, after the reference's (default 4)")
    resp.add_argument("--reference-root", help="the runs' reference clips, if not the bundled ones")
    resp.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    resp.add_argument("--out", help="also write every value (per run) to this JSON file")
    resp.set_defaults(run=_response)

    cmp = commands.add_parser("compare", help="score base and MotionDirector videos against the reference clip")
    cmp.add_argument("reference", help="the reference clip (mp4)")
    cmp.add_argument("--prompt", default=None,
                     help="the world caption the videos were generated from (default: read from each file name)")
    cmp.add_argument("--motion", default=None, choices=NEW_MOTIONS,
                     help="the target motion to measure the trajectory against (default: the prompt's)")
    cmp.add_argument("--base", required=True, nargs="+", help="videos of the base model (no LoRA, or LoRA scale 0)")
    cmp.add_argument("--motiondirector", required=True, nargs="+",
                     help="videos with the trained temporal LoRA, same prompts and seeds as --base, in order")
    cmp.add_argument("--strip-pairs", type=int, default=1, help="base/MotionDirector pairs drawn in strip.png (default 1)")
    cmp.add_argument("--out-dir", required=True, help="folder for scores.json and strip.png")
    cmp.set_defaults(run=_compare)

    trip = commands.add_parser("vae-roundtrip", help="trajectory distance of reference clips before and after "
                                                     "the base's VAE encode + decode")
    trip.add_argument("model", help="pipeline folder (e.g. models/toy_world_base)")
    trip.add_argument("clips", nargs="*", help="clips with same-named .txt captions (default: the single "
                                               "reference clip of each new motion of the base's world)")
    trip.add_argument("--motion", default=None, choices=NEW_MOTIONS,
                      help="the target motion of the given clips (default: each caption's; without clips, "
                           "each reference clip's own target)")
    trip.add_argument("--seed", type=int, default=0, help="seed of the posterior sample (default 0)")
    trip.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    trip.set_defaults(run=_vae_round_trip)

    exp = commands.add_parser("experiment", help="base, MotionDirector and its ablations on new motions (a table)")
    exp.add_argument("model", help="the base pipeline folder")
    exp.add_argument("out_dir", help="folder for the training runs, table.json, table.md and strips_<motion>.png")
    exp.add_argument("--motion", nargs="+", default=list(DEFAULT_MOTIONS), choices=NEW_MOTIONS,
                     help="target motions (default: zigzag circling growing)")
    exp.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                     help="single (one reference clip) and/or multi (three); default both")
    exp.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                     help="training variants (default: all)")
    exp.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                     help="training seeds (default 0 1 2 3 4)")
    exp.add_argument("--sample-seeds", type=int, default=2, help="samples per new subject (default 2)")
    exp.add_argument("--subjects", type=int, default=6, help="new subjects per motion (default 6)")
    exp.add_argument("--steps", type=int, default=600, help="MotionDirector training steps (default 600)")
    exp.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    exp.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                     help="config overrides for every training run, e.g. lora_rank=32 learning_rate=3e-3")
    exp.add_argument("--lora-scales", type=float, nargs="+", default=[], metavar="SCALE",
                     help="also sample every trained run with its temporal LoRA at these scales (rows "
                          "<variant>_ls<scale>; a finished run in out_dir is not trained again)")
    exp.add_argument("--reference-root", help="reference clips from this folder (make-data DIR --reference "
                                              "--reference-subjects ...) instead of the bundled test_data ones")
    exp.set_defaults(run=_experiment)

    table = commands.add_parser("table", help="one table from the rows of several experiment runs' table.json")
    table.add_argument("tables", nargs="+", help="table.json (or rows.jsonl, written row by row) files of experiment "
                                                 "runs; FILE@LABEL names a run with other settings (its rows become "
                                                 "<row>@LABEL, paired against MotionDirector too; its base and its own "
                                                 "labelled rows are dropped)")
    table.add_argument("--motion", nargs="+", default=[], help="keep only the rows of these motions (default: all)")
    table.add_argument("--out", help="write the merged rows, summary and differences to this JSON file "
                                     "(and the tables to the same name with .md)")
    table.set_defaults(run=_table)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.run(args)


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main))
