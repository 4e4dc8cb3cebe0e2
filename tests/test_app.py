"""The web demo: its functions on the tiny model, then the page end to end in headless Chromium."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")

import app  # noqa: E402  (needs gradio)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
PAGE_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Four frames: one training chunk, so caching inverts one clip, not four."""
    from utils.tools.synthetic import make_moving_shape_video

    return make_moving_shape_video(tmp_path_factory.mktemp("clip") / "square.mp4", frames=4, size=64, fps=8)


def _generate(model, motion="", output_dir=".", **overrides):
    form = dict(prompt="A car is running on the road.", negative_prompt="", seed=5, noise_prior=0.0, steps=2,
                width=64, height=64, frames=4, guidance=12.0)
    form.update(overrides)
    return app.generate(str(model), str(motion), output_dir=str(output_dir), **form)


def test_generate_returns_an_mp4(tiny_model_dir, tmp_path):
    path, status = _generate(tiny_model_dir, output_dir=tmp_path)
    assert path.endswith(".mp4") and Path(path).stat().st_size > 0
    assert Path(path).is_relative_to(tmp_path) and "seed 5" in status


def test_train_then_generate_with_the_trained_motion(tiny_model_dir, clip, tmp_path):
    run_dir, status = app.train(str(tiny_model_dir), str(clip), "A square is moving: to the right, fast.", 2,
                                64, 64, 4, output_dir=str(tmp_path))
    run_dir = Path(run_dir)
    assert (run_dir / "temporal" / "lora" / "2_unet.safetensors").is_file() and "2 steps" in status
    lora, cache = app.resolve_motion(str(run_dir))
    assert lora.parent == run_dir / "temporal" / "lora" and cache == run_dir / "cached_latents"
    # a checkpoint folder and the lora folder itself name the same motion
    assert app.resolve_motion(str(run_dir / "checkpoint-2"))[0].parent == run_dir / "checkpoint-2/temporal/lora"
    assert app.resolve_motion(str(run_dir / "temporal" / "lora")) == (lora, cache)
    path, _ = _generate(tiny_model_dir, run_dir, tmp_path, noise_prior=0.3)  # the run's cached clip as prior
    assert Path(path).is_file()


def test_train_tab_settings_fit_the_model_and_device(tiny_model_dir, tmp_path):
    from utils.training.config import load_config

    assert app.training_settings(str(tiny_model_dir), "cpu") == (str(app.TINY_TRAIN_CONFIG), {"mixed_precision": "no"})
    real = tmp_path / "zeroscope"  # only the UNet config decides: 40 x 8 = 320-pixel latents
    (real / "unet").mkdir(parents=True)
    (real / "unet" / "config.json").write_text('{"sample_size": 40}')
    config, overrides = app.training_settings(str(real), "cuda")
    cfg = load_config(config)
    assert overrides == {} and (cfg.mixed_precision, cfg.lora_rank, cfg.gradient_checkpointing) == ("fp16", 32, True)
    assert app.training_settings(str(real), "cpu")[1] == {"mixed_precision": "no"}  # fp16 needs CUDA
    assert app.training_settings(str(real), "cuda", "my.yaml")[0] == "my.yaml"  # --train_config wins


def test_training_drops_the_generation_model_first(tiny_model_dir, clip, tmp_path, monkeypatch):
    import utils.training.trainer

    _generate(tiny_model_dir, output_dir=tmp_path)
    assert app._pipeline.cache_info().currsize == 1
    held = []
    monkeypatch.setattr(utils.training.trainer, "run", lambda cfg: held.append(app._pipeline.cache_info().currsize) or tmp_path)
    app.train(str(tiny_model_dir), str(clip), "A square.", 1, 64, 64, 4, output_dir=str(tmp_path))
    assert held == [0]


def test_bad_input_is_a_one_line_page_error(tiny_model_dir, tmp_path):
    generate = app.show_user_errors(app.generate)
    with pytest.raises(gr.Error) as err:
        generate(str(tiny_model_dir), str(tmp_path / "nowhere"), "A car.", "", 1, 0.0, 2, 64, 64, 4, 12.0,
                 str(tmp_path))
    assert "motion folder not found" in err.value.message and "\n" not in err.value.message
    with pytest.raises(gr.Error, match="noise prior > 0 needs"):
        generate(str(tiny_model_dir), "", "A car.", "", 1, 0.5, 2, 64, 64, 4, 12.0, str(tmp_path))


def test_default_model_is_built_on_first_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert app.prepare_base_model(app.TINY_MODEL) == app.TINY_MODEL
    assert (tmp_path / "models" / "tiny_t2v" / "unet" / "config.json").is_file()
    assert app.default_size(app.TINY_MODEL) == 64


# ----------------------------------------------------------------------------- in a browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser_api():
    """Playwright's sync API, driving the system Chromium (skips before the server starts when missing)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return sync_api


@pytest.fixture
def served_app(tiny_model_dir, tmp_path):
    """`python app.py --model <tiny> --port P` as a user starts it; yields the page URL."""
    port = _free_port()
    log = open(tmp_path / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, "app.py", "--model", str(tiny_model_dir), "--port", str(port),
                             "--output_dir", str(tmp_path / "app")],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    pytest.fail(f"app.py did not start serving {url}:\n{log.read()[-3000:]}")
                time.sleep(0.5)
        yield url, tmp_path / "app"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_page_trains_and_generates_in_headless_chromium(browser_api, served_app, clip, tmp_path):
    sync_api, (url, output_dir) = browser_api, served_app
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(url)

            # Train: upload a clip, two steps; the run folder fills the Generate tab's motion box.
            page.get_by_role("tab", name="Train").click()
            page.locator("input[type=file]").first.set_input_files(str(clip))
            page.get_by_label("What the clip shows").fill("A square is moving to the right.")
            _set_slider(page, "Steps", 2)
            _set_slider(page, "Frames", 4)
            page.get_by_role("button", name="Train", exact=True).click()
            # live progress: the trainer's tqdm bars show in the page (caching + inversion take seconds)
            _visible(page.get_by_text("Caching latents")).first.wait_for()
            status = _visible(page.get_by_label("Status", exact=True))
            page.wait_for_function("el => el.value.includes('trained')", arg=status.element_handle())
            (run_dir,) = (output_dir / "train").iterdir()

            # Generate with it: a <video> appears and plays the file written on the server.
            page.get_by_role("tab", name="Generate").click()
            assert _visible(page.get_by_role("textbox", name="Motion:")).input_value() == str(run_dir)
            page.get_by_label("Prompt", exact=True).fill("A car is running on the road.")
            _set_slider(page, "Steps", 3)
            _set_slider(page, "Frames", 4)
            page.get_by_role("button", name="Generate", exact=True).click()
            page.wait_for_selector("video[src]")
            download = page.locator("a[download$='.mp4']").first.get_attribute("href")
            assert _visible(page.get_by_label("Status", exact=True)).input_value().startswith("seed ")
        finally:
            browser.close()
    (video,) = (output_dir / "videos").glob("*.mp4")
    served = urllib.request.urlopen(urllib.parse.urljoin(url, download), timeout=30).read()
    assert served == video.read_bytes()  # the page plays, and offers for download, the generated file


def _visible(locator):
    """The one match on the open tab (a tab visited once stays in the page, hidden)."""
    return locator.filter(visible=True)


def _set_slider(page, label: str, value: int) -> None:
    """Gradio sliders pair the range with a number box; typing into the box sets the value."""
    box = _visible(page.get_by_label(f"number input for {label}", exact=True))
    box.fill(str(value))
    box.press("Enter")

