"""The training step: loss terms, and which adapter each loss reaches."""

import random
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from models.lora import TEMPORAL, adapter_parameters, add_adapter, lora_layers, spatial_adapter_names
from helpers import ZEROSCOPE, lora_targets
from models.bases import Components
from models.bases.zeroscope import load_unet
from models.checkpointing import enable_gradient_checkpointing
from utils.training import step as ts


def test_appearance_debiased_loss_by_hand():
    torch.manual_seed(0)
    pred, target = torch.randn(1, 4, 5, 3, 3), torch.randn(1, 4, 5, 3, 3)
    alpha = 2**0.5
    expected = ((alpha * pred - pred[:, :, 2:3]) - (alpha * target - target[:, :, 2:3])).pow(2).mean()
    assert torch.allclose(ts.appearance_debiased_loss(pred, target, 2), expected)
    total = ts.temporal_loss(pred, target, 2)
    assert torch.allclose(total, (pred - target).pow(2).mean() + expected)


def test_offset_noise_adds_per_channel_frame_constants():
    latents = torch.zeros(2, 4, 3, 5, 5)
    torch.manual_seed(0)
    plain = ts.sample_noise(latents, offset=False, strength=0.1)
    torch.manual_seed(0)
    offset = ts.sample_noise(latents, offset=True, strength=0.1)
    diff = offset - plain
    assert diff.abs().max() > 0
    assert torch.allclose(diff, diff[..., :1, :1].expand_as(diff))  # constant over H, W


def test_v_prediction_target():
    scheduler = DDIMScheduler(prediction_type="v_prediction")
    latents, noise, t = torch.randn(1, 4, 2, 3, 3), torch.randn(1, 4, 2, 3, 3), torch.tensor([300])
    a = scheduler.alphas_cumprod[300]
    expected = a.sqrt() * noise - (1 - a).sqrt() * latents
    assert torch.allclose(ZEROSCOPE.target(scheduler, latents, noise, t), expected, atol=1e-6)


@pytest.fixture()
def setup(tiny_model_dir):
    torch.manual_seed(0)
    unet = load_unet(str(tiny_model_dir)).train()
    spatial = spatial_adapter_names(2)
    for name in [TEMPORAL, *spatial]:
        add_adapter(unet, name, lora_targets(unet, name), rank=4, dropout=0.0)
        for p in adapter_parameters(unet, name):  # non-zero up weights so every path has gradients
            p.data = torch.randn_like(p) * 0.05
    params = {n: adapter_parameters(unet, n) for n in [TEMPORAL, *spatial]}
    adapters = ts.Adapters(spatial, params, lora_layers(unet))
    scheduler = DDIMScheduler.from_pretrained(str(tiny_model_dir), subfolder="scheduler")
    latents, ehs = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 77, 32)
    return unet, scheduler, adapters, latents, ehs


def _run(setup, settings, spatial_name="spatial_1", seed=0):
    unet, scheduler, adapters, latents, ehs = setup
    for plist in adapters.params.values():
        for p in plist:
            p.grad = None
    random.seed(seed)
    torch.manual_seed(seed)
    components = Components(ZEROSCOPE, None, None, None, unet, scheduler)
    losses = ts.train_step(components, latents, ehs, adapters, spatial_name, settings,
                           backward=lambda loss: loss.backward(), autocast=nullcontext)
    grads = {n: [None if p.grad is None else p.grad.clone() for p in ps] for n, ps in adapters.params.items()}
    return losses, grads


def _has_grad(grads, name):
    return any(g is not None and g.abs().sum() > 0 for g in grads[name])


def _seed_without_skip():
    for seed in range(100):  # a seed whose spatial loss is not skipped (p = 0.2)
        random.seed(seed)
        if random.uniform(0, 1) >= ts.SPATIAL_SKIP_PROB:
            return seed


def test_each_loss_reaches_only_its_own_adapter(setup):
    seed = _seed_without_skip()
    losses, grads = _run(setup, ts.StepSettings(train_temporal=False), seed=seed)
    assert losses.spatial is not None and losses.temporal is None
    assert _has_grad(grads, "spatial_1") and not _has_grad(grads, "spatial_0") and not _has_grad(grads, TEMPORAL)
    spatial_only = grads["spatial_1"]

    losses, grads = _run(setup, ts.StepSettings(), seed=seed)
    assert losses.spatial is not None and losses.temporal is not None
    assert _has_grad(grads, TEMPORAL) and not _has_grad(grads, "spatial_0")
    # The temporal loss added nothing to the spatial gradient.
    assert all(torch.equal(a, b) for a, b in zip(spatial_only, grads["spatial_1"]))


def test_losses_match_a_hand_computation(setup):
    unet, scheduler, adapters, latents, ehs = setup
    seed = _seed_without_skip()
    losses, _ = _run(setup, ts.StepSettings(), seed=seed)

    # Redo the step by hand with the same random draws.
    random.seed(seed)
    torch.manual_seed(seed)
    random.uniform(0, 1)  # the skip draw
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (1,))
    noisy = scheduler.add_noise(latents, noise, t)
    frame = torch.randint(0, 4, (1,)).item()
    random.uniform(0, 1)  # the flip draw
    adapters.use(["spatial_1"], [])
    with torch.no_grad():
        pred = unet(noisy[:, :, frame : frame + 1], t, encoder_hidden_states=ehs).sample
        loss_s = F.mse_loss(pred[:, :, 0], noise[:, :, frame])
        adapters.use(["spatial_1", TEMPORAL], [])
        pred = unet(noisy, t, encoder_hidden_states=ehs).sample
    anchor = torch.randint(0, 4, (1,)).item()
    alpha = 2**0.5
    loss_t = F.mse_loss(pred, noise) + F.mse_loss(alpha * pred - pred[:, :, anchor : anchor + 1],
                                                  alpha * noise - noise[:, :, anchor : anchor + 1])
    assert losses.spatial == pytest.approx(loss_s.item(), rel=1e-5)
    assert losses.temporal == pytest.approx(loss_t.item(), rel=1e-5)


def test_skipped_spatial_step_trains_temporal_with_spatial_off(setup):
    for seed in range(100):
        random.seed(seed)
        if random.uniform(0, 1) < ts.SPATIAL_SKIP_PROB:
            break
    losses, grads = _run(setup, ts.StepSettings(), seed=seed)
    assert losses.spatial is None and losses.temporal is not None
    assert _has_grad(grads, TEMPORAL)
    assert not _has_grad(grads, "spatial_0") and not _has_grad(grads, "spatial_1")


def test_optimiser_steps_change_only_trained_adapters(setup):
    unet, _, adapters, _, _ = setup
    before = {n: [p.detach().clone() for p in ps] for n, ps in adapters.params.items()}
    base_before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}
    _run(setup, ts.StepSettings(), seed=_seed_without_skip())
    for name in (TEMPORAL, "spatial_1"):
        torch.optim.AdamW(adapters.params[name], lr=1e-3).step()
    changed = {n: any(not torch.equal(a, b) for a, b in zip(before[n], adapters.params[n])) for n in before}
    assert changed == {TEMPORAL: True, "spatial_1": True, "spatial_0": False}
    assert all(torch.equal(p, base_before[n]) for n, p in unet.named_parameters() if "lora_" not in n)


def test_gradient_checkpointing_gives_the_same_gradients(setup):
    seed = _seed_without_skip()
    losses, grads = _run(setup, ts.StepSettings(), seed=seed)
    enable_gradient_checkpointing(setup[0], ZEROSCOPE.checkpoint_targets(setup[0], "fine"))
    losses_ckpt, grads_ckpt = _run(setup, ts.StepSettings(), seed=seed)
    assert losses_ckpt.temporal == pytest.approx(losses.temporal, rel=1e-6)
    assert losses_ckpt.spatial == pytest.approx(losses.spatial, rel=1e-6)
    for name in grads:
        for a, b in zip(grads[name], grads_ckpt[name]):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(a, b, atol=1e-6)
