"""Tiny pipeline builder, DDIM inversion and the inversion noise prior."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from helpers import ddim_inversion
from utils.inference.noise_prior import mix_noise_prior, prepare_prior_latents
from utils.errors import UserError
from utils.tools.tiny_model import build_tiny_pipeline

TRAIN_PROMPT = "A car is running on the road."


@pytest.fixture(scope="module")
def original(original_md):
    folder = original_md / "tiny_t2v"
    return SimpleNamespace(
        root=original_md,
        unet=UNet3DConditionModel.from_pretrained(folder, subfolder="unet").eval().float(),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval(),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler"),
        cached=torch.load(original_md / "cached_latents" / "cached_0.pt", map_location="cpu"),
    )


@pytest.fixture
def reference_threads():
    """Run with the 2 CPU threads the reference was computed with (rounding depends on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _token_ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(
        [prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids


def _legacy_clip_hidden_states(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """CLIPTextModel's last hidden state with transformers 4.27's op order.

    transformers 5 scales q after q @ k^T (4.27 scaled q first), so its hidden
    states differ from the original's by ~1e-6. The inversion of the tiny random
    model is chaotic (a 1e-7 change of its input moves the result by ~0.5), so
    reproducing the reference `inversion_noise` needs bit-identical embeddings.
    """
    cfg = text_encoder.config
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    bsz, n = input_ids.shape
    heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    h = sd["embeddings.token_embedding.weight"][input_ids] + sd["embeddings.position_embedding.weight"][:n][None]
    mask = torch.full((bsz, n, n), torch.finfo(h.dtype).min).triu_(1).unsqueeze(1)

    def ln(x, p):
        return F.layer_norm(x, (cfg.hidden_size,), sd[p + ".weight"], sd[p + ".bias"], cfg.layer_norm_eps)

    def lin(x, p):
        return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])

    def heads_first(x):  # (b, n, d) -> (b * heads, n, head_dim)
        return x.view(bsz, n, heads, head_dim).transpose(1, 2).contiguous().view(bsz * heads, n, head_dim)

    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layers.{i}."
        x = ln(h, p + "layer_norm1")
        q = heads_first(lin(x, p + "self_attn.q_proj") * head_dim**-0.5)
        k, v = heads_first(lin(x, p + "self_attn.k_proj")), heads_first(lin(x, p + "self_attn.v_proj"))
        w = (torch.bmm(q, k.transpose(1, 2)).view(bsz, heads, n, n) + mask).view(bsz * heads, n, n)
        o = torch.bmm(F.softmax(w, dim=-1), v).view(bsz, heads, n, head_dim).transpose(1, 2)
        h = h + lin(o.reshape(bsz, n, cfg.hidden_size), p + "self_attn.out_proj")
        h = h + lin(F.gelu(lin(ln(h, p + "layer_norm2"), p + "mlp.fc1")), p + "mlp.fc2")
    return ln(h, "final_layer_norm")


# --- tiny pipeline -------------------------------------------------------------------------------


def test_tiny_pipeline_loads_and_runs(tiny_model_dir):
    assert (tiny_model_dir / "model_index.json").exists()
    assert (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    unet = UNet3DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(tiny_model_dir, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(tiny_model_dir, subfolder="text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_pretrained(tiny_model_dir, subfolder="scheduler")

    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    assert scheduler.config.steps_offset == 1 and not scheduler.config.set_alpha_to_one
    ids = _token_ids(tokenizer, TRAIN_PROMPT)
    assert ids[0, :10].tolist() == [545, 320, 513, 514, 520, 521, 523, 526, 269, 546]
    assert tokenizer.pad_token_id == 0
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
        out = unet(torch.randn(1, 4, 8, 8, 8), torch.tensor([500]), encoder_hidden_states=hidden).sample
    assert hidden.shape == (1, 77, 32)
    assert out.shape == (1, 4, 8, 8, 8) and torch.isfinite(out).all()


def test_tiny_unet_temporal_outputs_are_randomised(tiny_model_dir):
    unet = UNet3DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    temporal_out = [unet.transformer_in.proj_out.weight]
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        temporal_out += [conv.conv4[-1].weight for conv in block.temp_convs]
        temporal_out += [attn.proj_out.weight for attn in getattr(block, "temp_attentions", [])]
    assert len(temporal_out) > 5
    assert all(w.abs().sum() > 0 for w in temporal_out)
    assert all(p.any() for p in unet.parameters())


def test_tiny_pipeline_is_deterministic(tiny_model_dir, tmp_path):
    again = build_tiny_pipeline(tmp_path / "again", seed=0)
    for sub in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (again / sub).read_bytes() == (tiny_model_dir / sub).read_bytes()


# --- DDIM inversion ------------------------------------------------------------------------------


class _ConstantUNet(torch.nn.Module):
    """Predicts a fixed epsilon and records the timesteps it was called with."""

    def __init__(self, eps: torch.Tensor):
        super().__init__()
        self.eps, self.calls = eps, []

    def forward(self, sample, t, encoder_hidden_states):
        self.calls.append(int(t))
        return SimpleNamespace(sample=self.eps)


def test_inversion_timestep_alpha_pairing():
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    x = torch.randn(1, 4, 2, 4, 4)
    eps = torch.randn_like(x)
    unet = _ConstantUNet(eps)
    out = ddim_inversion(unet, scheduler, x, torch.zeros(1, 77, 8), num_steps=4)

    assert unet.calls == [1, 251, 501, 751]  # upward; the UNet sees the upper timestep
    alphas, expected = scheduler.alphas_cumprod, x
    for t in unet.calls:
        a = alphas[t - 250] if t - 250 >= 0 else alphas[0]  # final_alpha_cumprod = alphas[0]
        expected = alphas[t] ** 0.5 * (expected - (1 - a) ** 0.5 * eps) / a**0.5 + (1 - alphas[t]) ** 0.5 * eps
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_inversion_of_a_v_prediction_model_equals_its_noise_form():
    """A model that predicts v = (eps - sqrt(1-a) x) / sqrt(a) inverts exactly like the model that
    predicts that eps: the inversion converts v back to the noise with the same alpha."""
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    eps_scheduler = DDIMScheduler(**config)
    v_scheduler = DDIMScheduler(**config, prediction_type="v_prediction")
    alphas = eps_scheduler.alphas_cumprod

    def eps_of(x, t):
        return 0.3 * x + torch.sin(torch.tensor(float(t)) / 100)

    class Model(torch.nn.Module):
        def __init__(self, v: bool):
            super().__init__()
            self.v = v

        def forward(self, x, t, encoder_hidden_states=None):
            eps = eps_of(x, t)
            a = alphas[int(t)]
            return SimpleNamespace(sample=(eps - (1 - a) ** 0.5 * x) / a**0.5 if self.v else eps)

    x = torch.randn(1, 4, 2, 4, 4)
    context = torch.zeros(1, 77, 8)
    expected = ddim_inversion(Model(False), eps_scheduler, x, context, num_steps=5)
    torch.testing.assert_close(ddim_inversion(Model(True), v_scheduler, x, context, num_steps=5), expected,
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="sample"):
        ddim_inversion(Model(False), DDIMScheduler(**config, prediction_type="sample"), x, context, num_steps=2)


def test_inversion_runs_on_tiny_model(tiny_model_dir):
    unet = UNet3DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet").eval()
    scheduler = DDIMScheduler.from_pretrained(tiny_model_dir, subfolder="scheduler")
    latents = torch.randn(1, 4, 4, 8, 8)
    before = latents.clone()
    out = ddim_inversion(unet, scheduler, latents, torch.randn(1, 77, 32), num_steps=3)
    assert out.shape == latents.shape and torch.isfinite(out).all()
    assert torch.equal(latents, before)
    assert scheduler.num_inference_steps is None  # the caller's scheduler is untouched


def test_text_encoder_matches_original(original, reference_threads):
    reference = torch.load(original.root / "outputs" / "text_encoder_hidden_states_train_prompt.pt")
    ids = _token_ids(original.tokenizer, TRAIN_PROMPT)
    assert torch.equal(ids[0], original.cached["prompt_ids"])
    with torch.no_grad():
        hidden = original.text_encoder(ids)[0]
        legacy = _legacy_clip_hidden_states(original.text_encoder, ids)
    assert (hidden - reference).abs().max() < 1e-5
    if _rounds_like_reference(original):
        assert torch.equal(legacy, reference)
    else:  # another CPU's matmul kernels round differently: equal to rounding only
        assert (legacy - reference).abs().max() < 1e-6


def _rounds_like_reference(original) -> bool:
    """Whether this CPU reproduces the reference UNet forward bit for bit (kernels differ by CPU)."""
    x = torch.load(original.root / "inputs" / "input_latents_1x4x8x8x8.pt")
    ehs = torch.load(original.root / "inputs" / "input_encoder_hidden_states_1x77x32.pt")
    with torch.no_grad():
        out = original.unet(x, torch.tensor([500]), encoder_hidden_states=ehs).sample
    return torch.equal(out, torch.load(original.root / "outputs" / "out_nolora_8f.pt"))


def test_inversion_matches_original(original, reference_threads):
    # The 50-step inversion of the tiny random model is chaotic: a 1e-7 change anywhere
    # (input, embeddings, or UNet rounding) moves the result by ~0.5. Matching the
    # original therefore needs a bit-identical UNet forward, which holds with the
    # reference's 2 CPU threads on this platform; check that first.
    if not _rounds_like_reference(original):
        pytest.skip("UNet rounding on this CPU differs from the reference machine; the chaotic "
                    "tiny-model inversion cannot be compared bit for bit")

    ids = _token_ids(original.tokenizer, "")
    with torch.no_grad():
        empty = _legacy_clip_hidden_states(original.text_encoder, ids)
    latents = original.cached["latents"].unsqueeze(0)
    inverted = ddim_inversion(original.unet, original.scheduler, latents, empty, num_steps=50)
    max_diff = (inverted[0] - original.cached["inversion_noise"]).abs().max().item()
    assert max_diff < 1e-4, f"max abs diff to the original's inversion_noise: {max_diff}"


# --- noise prior ---------------------------------------------------------------------------------


def test_mix_noise_prior_endpoints_and_mix():
    inverted, noise = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5)
    assert torch.equal(mix_noise_prior(inverted, noise, 0.0), noise)
    assert torch.equal(mix_noise_prior(inverted, noise, 1.0), inverted)
    torch.testing.assert_close(mix_noise_prior(inverted, noise, 0.25), 0.5 * inverted + 0.75**0.5 * noise)
    with pytest.raises(UserError):
        mix_noise_prior(inverted, noise, 1.5)


def test_prepare_prior_latents_repeats_over_batch():
    inverted = torch.randn(4, 3, 8, 8)
    out = prepare_prior_latents(inverted, batch_size=3, num_frames=3, height_latent=8, width_latent=8)
    assert out.shape == (3, 4, 3, 8, 8)
    assert all(torch.equal(out[i], inverted) for i in range(3))
    batched = prepare_prior_latents(inverted[None], batch_size=2, num_frames=3, height_latent=8, width_latent=8)
    assert torch.equal(batched, out[:2])


def test_prepare_prior_latents_resizes_each_frame():
    inverted = torch.randn(4, 3, 8, 8)
    out = prepare_prior_latents(inverted, batch_size=2, num_frames=3, height_latent=12, width_latent=6)
    assert out.shape == (2, 4, 3, 12, 6)
    for f in range(3):
        frame = F.interpolate(inverted[:, f][None], size=(12, 6), mode="bilinear")[0]
        torch.testing.assert_close(out[1, :, f], frame)


def test_prepare_prior_latents_rejects_other_frame_count():
    with pytest.raises(UserError, match="frames"):
        prepare_prior_latents(torch.randn(4, 8, 8, 8), batch_size=1, num_frames=16, height_latent=8, width_latent=8)
