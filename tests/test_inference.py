"""Inference: original LoRA outputs reproduced, the noise prior, file naming, and both CLIs end to end."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import MotionDirector_inference as single_cli
import MotionDirector_inference_multi as multi_cli
from models.lora import SPATIAL, TEMPORAL, activate, adapter_names, adapter_parameters, add_adapter
from models.lora_io import load_adapter, read_lora_config, save_adapter
from models.bases.zeroscope import load_unet
from utils.tools import convert_lora
from utils.cli import run_cli
from utils.inference.noise_prior import NoisePrior, mix_noise_prior
from utils.errors import UserError
from utils.inference.generate import (
    GenerationSettings,
    free_path,
    output_stem,
    prepare_model,
    repeat_seeds,
    sample_video,
    share_of,
)
from utils.io.video_io import read_frames, video_info
from utils.run_folder import cache_of_lora
from helpers import ZEROSCOPE, lora_targets

REPO = Path(__file__).resolve().parents[1]
PROMPT = "A car is running on the road."
SMALL = ["-W", "64", "-H", "64", "-T", "8", "-s", "2", "-d", "cpu"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny model's tensors are so small that a second thread only adds contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- original outputs


def _original_unet(original_md, spatial=None, temporal=None, temporal_scale=1.0):
    unet = load_unet(str(original_md / "tiny_t2v")).eval()
    if spatial:
        load_adapter(unet, spatial, SPATIAL, lora_targets(unet, SPATIAL))
    if temporal:
        load_adapter(unet, temporal, TEMPORAL, lora_targets(unet, TEMPORAL), scale=temporal_scale)
    activate(unet, adapter_names(unet))
    return unet


def _original_output(original_md, name, frames):
    """The original's output with gradient checkpointing on, as every shipped config ran it.

    On one frame every temporal layer is skipped, so the temporal scale has no effect there and
    `temporal_s0.5` (not recorded with checkpointing) equals `temporal_s1`.
    """
    if frames == 1 and name == "temporal_s0.5":
        name = "temporal_s1"
    return torch.load(original_md / f"outputs_gc/out_{name}_{frames}f_gc.pt" if name != "temporal_s0.5"
                      else original_md / f"outputs/out_{name}_{frames}f.pt")


def _matches_original(unet, original_md, name):
    ehs = torch.load(original_md / "inputs/input_encoder_hidden_states_1x77x32.pt")
    for frames in (8, 1):
        latents = torch.load(original_md / f"inputs/input_latents_1x4x{frames}x8x8.pt")
        with torch.no_grad():
            out = unet(latents, torch.tensor([500]), encoder_hidden_states=ehs).sample
        expected = _original_output(original_md, name, frames)
        assert (out - expected).abs().max() < 1e-5, f"{name} {frames}f"


@pytest.mark.parametrize(
    "name, spatial, temporal, scale",
    [("temporal_s1", False, True, 1.0), ("temporal_s0.5", False, True, 0.5),
     ("spatial_s1", True, False, 1.0), ("spatial_s1_temporal_s1", True, True, 1.0)],
)
def test_original_checkpoint_reproduces_original_outputs(original_md, name, spatial, temporal, scale):
    lora = original_md / "checkpoint-4"
    unet = _original_unet(original_md, spatial and lora / "spatial/lora", temporal and lora / "temporal/lora", scale)
    _matches_original(unet, original_md, name)


def test_converted_lora_reloads_to_the_same_numbers(original_md, tmp_path, capsys):
    lora = original_md / "checkpoint-4"
    for path in (SPATIAL, TEMPORAL):
        argv = ["--model", str(original_md / "tiny_t2v"), "--path", path,
                str(lora / path / "lora/4_unet.pt"), str(tmp_path / path / "4_unet.safetensors")]
        (tmp_path / path).mkdir()
        assert run_cli(convert_lora.main, argv) == 0
    assert read_lora_config(tmp_path / TEMPORAL / "4_unet.safetensors")["r"] == 4
    unet = _original_unet(original_md, tmp_path / SPATIAL, tmp_path / TEMPORAL)
    _matches_original(unet, original_md, "spatial_s1_temporal_s1")
    # a second conversion onto the same file is refused
    assert run_cli(convert_lora.main, argv) == 2
    assert "--overwrite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- noise prior and seeds


def test_noise_prior_mixing_endpoints():
    inverted, noise = torch.randn(1, 4, 8, 8, 8), torch.randn(1, 4, 8, 8, 8)
    assert torch.equal(mix_noise_prior(inverted, noise, 0.0), noise)
    assert torch.equal(mix_noise_prior(inverted, noise, 1.0), inverted)


def _cache_file(folder: Path, frames=8, with_inversion=True, seed=0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    entry = {"latents": torch.randn(4, frames, 8, 8, generator=generator), "text_prompt": PROMPT}
    if with_inversion:
        entry["inversion_noise"] = torch.randn(4, frames, 8, 8, generator=generator)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(entry, folder / "cached_0.pt")
    return folder / "cached_0.pt"


@pytest.fixture(scope="module")
def tiny_components(tiny_model_dir):
    return prepare_model(str(tiny_model_dir), [], "cpu", torch.float32)


def test_full_noise_prior_makes_the_video_seed_independent(tiny_components, tmp_path):
    prior = NoisePrior([_cache_file(tmp_path)])
    inverted = prior.inverted(prior.pick(1, 8, ZEROSCOPE), tiny_components)
    settings = GenerationSettings(PROMPT, width=64, height=64, num_frames=8, num_steps=2, noise_prior=1.0)
    assert torch.equal(sample_video(tiny_components, settings, 1, inverted),
                       sample_video(tiny_components, settings, 2, inverted))
    settings.noise_prior = 0.0
    assert not torch.equal(sample_video(tiny_components, settings, 1, inverted),
                           sample_video(tiny_components, settings, 2, inverted))


def test_noise_prior_draws_only_clips_of_the_requested_length(tmp_path):
    """A 20-frame single video cut into 8 + 8 + 4: the 4-frame chunk is never drawn for 8 frames."""
    for i, frames in enumerate((8, 8, 4)):
        torch.save({"latents": torch.zeros(4, frames, 8, 8)}, tmp_path / f"cached_{i}.pt")
    prior = NoisePrior.from_folder(tmp_path, "fix it")
    assert {prior.pick(seed, 8, ZEROSCOPE).name for seed in range(200)} == {"cached_0.pt", "cached_1.pt"}
    assert prior.pick(3, 8, ZEROSCOPE) == prior.pick(3, 8, ZEROSCOPE)  # seeded
    assert {prior.pick(seed, 4, ZEROSCOPE).name for seed in range(20)} == {"cached_2.pt"}
    with pytest.raises(UserError, match="no cached training clip has 6 frames.*they have 4, 8"):
        prior.pick(0, 6, ZEROSCOPE)


def test_missing_inversion_is_computed_once_and_written_back(tiny_components, tmp_path, monkeypatch):
    file = _cache_file(tmp_path, frames=2, with_inversion=False)
    inverted = NoisePrior([file]).inverted(file, tiny_components)
    assert inverted.shape == (4, 2, 8, 8)
    assert torch.equal(torch.load(file)["inversion_noise"], inverted)
    assert not list(tmp_path.glob("*.tmp"))
    import utils.inference.noise_prior

    monkeypatch.setattr(utils.inference.noise_prior, "invert_clip", lambda *a: pytest.fail("inverted twice"))
    assert torch.equal(NoisePrior([file]).inverted(file, tiny_components), inverted)


def test_seeds_names_and_process_shares(tmp_path, monkeypatch):
    import utils.inference.generate

    assert repeat_seeds(7, 3) == [7, 8, 9]
    assert all(100 <= s <= 10_000_000 for s in repeat_seeds(None, 5))
    shares = [share_of(5, rank, 2) for rank in range(2)]
    assert shares == [[0, 2, 4], [1, 3]]
    # prompts x seeds are dealt out as pairs: three prompts with one seed keep two processes busy
    from utils.inference.generate import my_jobs

    for rank, expected in ((0, {0: [0], 2: [0]}), (1, {1: [0]})):
        monkeypatch.setattr(utils.inference.generate, "process_state", lambda r=rank: SimpleNamespace(process_index=r, num_processes=2))
        assert my_jobs(3, 1) == expected
    monkeypatch.setattr(utils.inference.generate, "process_state", lambda: SimpleNamespace(process_index=1, num_processes=2))
    assert my_jobs(2, 3) == {0: [1], 1: [0, 2]}  # pairs (0,0) (0,1) (0,2) (1,0) (1,1) (1,2): odd ones
    assert output_stem("A tank, in the desert.") == "A_tank_in_the_desert"
    assert output_stem("a/b") == "a_b"
    (tmp_path / "x_1.mp4").write_bytes(b"")
    assert free_path(tmp_path, "x_1", [".mp4"], overwrite=False).name == "x_1_1"
    assert free_path(tmp_path, "x_1", [".mp4"], overwrite=True).name == "x_1"


# ----------------------------------------------------------------------------- CLIs end to end


def _randomize(unet, name, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in adapter_parameters(unet, name):
        p.data = torch.randn(p.shape, generator=generator) * 0.05


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A training run of the tiny model in our format: checkpoint-2/, final adapters, cached_latents/."""
    run = tmp_path_factory.mktemp("runs") / "train_2024-01-01T00-00-00"
    unet = load_unet(str(tiny_model_dir))
    for name, seed in ((SPATIAL, 1), (TEMPORAL, 2)):
        add_adapter(unet, name, lora_targets(unet, name), rank=4)
        _randomize(unet, name, seed)
        for root in (run / "checkpoint-2", run):
            save_adapter(unet, name, root / name / "lora" / "2_unet.safetensors")
    _cache_file(run / "cached_latents")  # with inversion_noise: the write-back has its own test
    return run


def _run(main, argv, capsys):
    code = run_cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _written(out: str) -> list[Path]:
    return [Path(line[len("wrote "):]) for line in out.splitlines() if line.startswith("wrote ")]


def test_inference_cli_writes_reproducible_videos_and_never_overwrites(tiny_model_dir, tiny_run, tmp_path, capsys):
    argv = ["--model", tiny_model_dir, "-p", PROMPT, "-cf", tiny_run, "-ci", "2", "-np", "0.5",
            "--seed", "7", "-o", tmp_path, *SMALL]
    code, out, err = _run(single_cli.main, argv, capsys)
    assert code == 0, err
    first = tmp_path / "A_car_is_running_on_the_road_7.mp4"
    assert _written(out) == [first]
    info = video_info(first)
    assert (info.num_frames, info.height, info.width) == (8, 64, 64)

    frames = read_frames(first, range(8))
    assert _run(single_cli.main, [*argv, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    assert (read_frames(first, range(8)) == frames).all()

    code, out, _ = _run(single_cli.main, argv, capsys)
    assert code == 0 and _written(out) == [tmp_path / "A_car_is_running_on_the_road_7_1.mp4"]
    assert (read_frames(_written(out)[0], range(8)) == frames).all()


def test_inference_cli_on_an_original_training_run(original_md, tmp_path, capsys):
    run = tmp_path / "run"
    for part in ("checkpoint-4", "cached_latents"):
        shutil.copytree(original_md / part, run / part)
    argv = ["--model", original_md / "tiny_t2v", "-p", "A tank is running in the desert.", "-cf", run,
            "--checkpoint_index", "4", "--noise_prior", "0.5", "-W", "64", "-H", "64", "-T", "8", "-s", "3",
            "--seed", "1234", "-d", "cpu", "-o", tmp_path / "out"]
    code, out, err = _run(single_cli.main, argv, capsys)
    assert code == 0, err
    video = tmp_path / "out" / "A_tank_is_running_in_the_desert_1234.mp4"
    assert _written(out) == [video]
    info = video_info(video)
    assert (info.num_frames, info.height, info.width) == (8, 64, 64)


def test_multi_cli_writes_mp4_and_gif_with_prior_from_the_temporal_run(tiny_model_dir, tiny_run, tmp_path, capsys):
    argv = ["--model", tiny_model_dir, "-p", PROMPT, "-slp", tiny_run / "checkpoint-2/spatial/lora/",
            "-tlp", tiny_run / "checkpoint-2/temporal/lora/", "-sps", "0.5", "-np", "0.3", "-rn", "2",
            "--seed", "11", "-o", tmp_path, *SMALL]
    code, out, err = _run(multi_cli.main, argv, capsys)
    assert code == 0, err
    names = sorted(p.name for p in _written(out))
    stem = "A_car_is_running_on_the_road"
    assert names == [f"{stem}_11.gif", f"{stem}_11.mp4", f"{stem}_12.gif", f"{stem}_12.mp4"]
    assert video_info(tmp_path / f"{stem}_12.mp4").num_frames == 8


def test_multi_cli_finds_the_cache_for_both_run_layouts(tiny_run):
    cache = tiny_run / "cached_latents"
    assert cache_of_lora(str(tiny_run / "checkpoint-2/temporal/lora")) == cache.resolve()
    assert cache_of_lora(str(tiny_run / "temporal/lora/")) == cache.resolve()


def _one_line_error(code, err) -> str:
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_index", "existing checkpoint indices: 2, default"),
        ("noise_prior", "--noise_prior must be in [0, 1], got 1.5"),
        ("no_model", "model folder not found"),
        ("no_cache", "use --noise_prior 0"),
        ("bad_width", "multiples of 8"),
    ],
)
def test_inference_cli_bad_input_is_one_line_error(case, expected, tiny_model_dir, tiny_run, tmp_path, capsys):
    args = {"-ci": "2", "-np": "0", "--model": tiny_model_dir, "-cf": tiny_run, "-W": "64"}
    if case == "missing_index":
        args["-ci"] = "99"
    elif case == "noise_prior":
        args["-np"] = "1.5"
    elif case == "no_model":
        args["--model"] = tmp_path / "nowhere"
    elif case == "no_cache":
        shutil.copytree(tiny_run / "checkpoint-2", tmp_path / "run" / "checkpoint-2")
        args["-cf"], args["-np"] = tmp_path / "run", "0.5"
    elif case == "bad_width":
        args["-W"] = "60"
    argv = ["-p", PROMPT, "-o", tmp_path, "-H", "64", "-T", "8", "-s", "1", "-d", "cpu"]
    argv += [x for pair in args.items() for x in pair]
    assert expected in _one_line_error(*_run(single_cli.main, argv, capsys)[::2])


def test_multi_cli_lora_of_another_model_is_one_line_error(original_md, tiny_model_dir, tmp_path, capsys):
    # A spatial file (24 layers) offered as the temporal path (50 layers) does not fit the model.
    argv = ["--model", tiny_model_dir, "-p", PROMPT, "-tlp", original_md / "checkpoint-4/spatial/lora",
            "-o", tmp_path, *SMALL]
    message = _one_line_error(*_run(multi_cli.main, argv, capsys)[::2])
    assert "24 LoRA layers but the model's temporal path has 50" in message


def test_inference_script_runs_as_a_command(tiny_model_dir, tiny_run, tmp_path):
    command = [sys.executable, "MotionDirector_inference.py", "--model", tiny_model_dir, "-p", PROMPT,
               "-cf", tiny_run, "--seed", "3", "-o", tmp_path, *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"wrote {tmp_path / 'A_car_is_running_on_the_road_3.mp4'}"
