"""The MotionDirector training run: models -> adapters and optimisers -> data -> train -> save."""

import logging
import math
import re
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast, broadcast_object_list, gather_object, set_seed
from accelerate.utils.imports import is_tensorboard_available, is_wandb_available
from omegaconf import OmegaConf
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from models.bases import base_for_model, load_components
from models.checkpointing import enable_gradient_checkpointing
from models.lora import TEMPORAL, adapter_parameters, add_adapter, lora_layers, path_of, spatial_adapter_names
from models.lora_io import load_adapter
from utils.run_folder import CACHE_DIR, CONFIG_FILE, LOGS_DIR, SAMPLES_DIR, adapter_folder, new_run_dir
from utils.training.checkpoints import (
    load_training_state,
    resolve_resume,
    rng_state,
    save_checkpoint,
    save_final,
    set_rng_state,
)
from utils.cli import process_state
from utils.training.config import save_config
from utils.training.dataset import build_dataset
from utils.errors import UserError
from utils.training.latent_cache import cache_dataset, load_cached
from utils.training.model_card import write_model_card
from utils.training.prompt_cache import PromptCache
from utils.training.step import Adapters, StepSettings, train_step
from utils.training.validation import log_validation

logger = logging.getLogger(__name__)
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Optimisers:
    """One AdamW + LR scheduler per adapter (per spatial video and the temporal path)."""

    optimizers: dict
    schedulers: dict

    def step(self, names, scheduler_names, params, scaler=None, max_grad_norm=None):
        """Step the optimisers of `names` (clipping each path's gradients first), then the LR
        schedulers of `scheduler_names`: as in the original, the temporal one and the spatial one
        of the clip trained on, also when its spatial loss was skipped this step."""
        for name in names:
            optimizer = self.optimizers[name]
            if max_grad_norm is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params[name], max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
            else:
                optimizer.step()
        if scaler is not None:
            scaler.update()
        with warnings.catch_warnings():  # a clip whose spatial loss was skipped still advances its LR
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for name in scheduler_names:
                self.schedulers[name].step()
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def state_dict(self):
        return {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_state_dict(self, state):
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])


class StopRequested(Exception):
    pass


def run(cfg) -> Path:
    """Train as the config says; returns the run folder."""
    state = process_state()
    if cfg.mixed_precision == "fp16" and state.device.type != "cuda":
        raise UserError(f"mixed_precision: fp16 needs a CUDA GPU but training runs on {state.device.type}; "
                        "set mixed_precision=no (or bf16)")
    if cfg.save_pretrained_model:
        logger.warning("save_pretrained_model: only the LoRA adapters are saved; the base model never changes")
    if cfg.train_batch_size > 1:
        logger.warning("train_batch_size: %d: each step trains on one clip (its own spatial LoRA); the original "
                       "stacked that many clips into a step, under the spatial LoRA of the batch's position (and, "
                       "caching latents, kept only the first clip of each batch); use gradient_accumulation_steps "
                       "for several clips per update", cfg.train_batch_size)
    # Every input is checked before the run folder is made or a model is loaded.
    base = base_for_model(cfg.pretrained_model_path, base_options(cfg))
    check_sizes(cfg, base)
    resume_from = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir) if cfg.resume_from_checkpoint else None
    dataset = build_dataset(cfg.train_data, list(cfg.dataset_types))
    run_dir = resume_from.parent if resume_from else _shared_run_dir(cfg, state)
    accelerator = make_accelerator(cfg, run_dir)
    if cfg.seed is not None:
        set_seed(cfg.seed)
    components = load_components(cfg.pretrained_model_path, accelerator.device, DTYPES[cfg.mixed_precision],
                                 base_options(cfg))
    components.scheduler = base.training_scheduler(components.scheduler,
                                                   cfg.rescale_schedule and not cfg.use_offset_noise)
    items = _training_items(cfg, dataset, components, run_dir, accelerator)
    if accelerator.is_main_process:
        write_model_card(run_dir, base, cfg.pretrained_model_path, [item["prompt"] for item in items],
                         cfg.max_train_steps, base_options(cfg))
    if accelerator.device.type == "cuda" and not base.text_encoder_on_cpu:
        # Prompts are encoded once per distinct text: the frozen text encoder need not hold GPU memory.
        components.text_encoder.to("cpu", torch.float32)
    adapters = add_adapters(cfg, components, len(items), resume_from)
    _broadcast_from_main(adapters, state)
    _seed_per_process(cfg, state)
    optimisers = make_optimisers(cfg, adapters)
    prepare_denoiser(cfg, components)
    trainer = TrainingLoop(cfg, accelerator, components, adapters, optimisers, items, run_dir)
    start_step = trainer.resume(resume_from) if resume_from else 0
    trainer.train(start_step)
    accelerator.end_training()
    return run_dir


def base_options(cfg) -> dict:
    """The config keys a base reads beside the model path."""
    options = {}
    if cfg.motion_adapter_path:
        options["motion_adapter_path"] = cfg.motion_adapter_path
    if cfg.lora_layers:
        options["lora_layers"] = OmegaConf.to_container(cfg.lora_layers)
    return options


def check_sizes(cfg, base) -> None:
    """Frame sizes and counts the base cannot take fail before anything is loaded."""
    td, vd = cfg.train_data, cfg.validation_data
    base.check_size(td.width, td.height, "train_data.width and height")
    base.check_frames(td.n_sample_frames, "train_data.n_sample_frames")
    base.check_size(vd.width, vd.height, "validation_data.width and height")
    base.check_frames(vd.num_frames, "validation_data.num_frames")


def _shared_run_dir(cfg, state) -> Path:
    """The main process makes the run folder; every process gets its name."""
    run_dir = [None]
    if state.is_main_process:
        run_dir = [str(new_run_dir(cfg.output_dir))]
        save_config(cfg, Path(run_dir[0]) / CONFIG_FILE)
        logger.info("run folder: %s", run_dir[0])
    if state.num_processes > 1:
        broadcast_object_list(run_dir)
    return Path(run_dir[0])


def make_accelerator(cfg, run_dir: Path) -> Accelerator:
    """Mixed precision, devices and processes; TensorBoard/wandb events go to <run>/logs."""
    tracker = None if cfg.logger_type == "none" else cfg.logger_type
    if tracker == "tensorboard" and not is_tensorboard_available():
        logger.warning("logger_type: tensorboard but tensorboard is not installed (pip install tensorboard); not logging")
        tracker = None
    if tracker == "wandb" and not is_wandb_available():
        logger.warning("logger_type: wandb but wandb is not installed (pip install wandb); not logging")
        tracker = None
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / LOGS_DIR))
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=tracker, project_config=project)
    if tracker is not None:
        # wandb writes into its `dir` (else ./wandb of the working directory), which must exist
        (run_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
        accelerator.init_trackers("motiondirector", config=_flat_config(cfg),
                                  init_kwargs={"wandb": {"dir": str(run_dir / LOGS_DIR)}})
    return accelerator


def _flat_config(cfg) -> dict:
    """Scalars only: what TensorBoard's hparams accept."""
    flat = {}
    for key, value in OmegaConf.to_container(cfg, resolve=True).items():
        if isinstance(value, (int, float, str, bool)):
            flat[key] = value
    return flat


def _training_items(cfg, dataset, components, run_dir, accelerator) -> list[dict]:
    """Cached latents in memory, or raw clips (encoded every step) when caching is off."""
    if len(dataset) == 0:
        raise UserError("the training data is empty: check train_data paths and dataset_types")
    if cfg.cached_latent_dir:
        return [_to_device(item, accelerator.device) for item in load_cached(Path(cfg.cached_latent_dir))]
    if not cfg.cache_latents:
        return [dict(dataset[i], index=i, lazy=True) for i in range(len(dataset))]
    cache_dir = run_dir / CACHE_DIR
    if accelerator.is_main_process and not (cache_dir.is_dir() and any(cache_dir.iterdir())):
        with_inversion = cfg.validation_data.noise_prior > 0
        cache_dataset(dataset, components, cache_dir, with_inversion, keep_pixels=cfg.random_hflip_img > 0)
    accelerator.wait_for_everyone()
    return [_to_device(item, accelerator.device) for item in load_cached(cache_dir)]


def _to_device(item: dict, device) -> dict:
    """Cached tensors live on the training device for the whole run (no per-step copies)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in item.items()}


def add_adapters(cfg, components, num_items: int, resume_from: Path | None) -> Adapters:
    """Fresh adapters, or the ones saved in the resumed checkpoint / under `lora_path`."""
    unet = components.denoiser
    spatial = spatial_adapter_names(1 if cfg.single_spatial_lora else num_items) if cfg.train_spatial_lora else []
    names = ([TEMPORAL] if cfg.train_temporal_lora else []) + spatial
    for name in names:
        start = _initial_lora_folder(cfg, name, spatial, resume_from)
        if start is not None:  # float32, never through the frozen UNet's half precision
            load_adapter(unet, start, name, components.lora_targets(path_of(name)), dropout=cfg.lora_unet_dropout,
                         dtype=torch.float32)
        else:  # float32 draws, never rounded through the frozen model's half precision
            add_adapter(unet, name, components.lora_targets(path_of(name)), cfg.lora_rank, cfg.lora_unet_dropout,
                        dtype=torch.float32)
    params = {name: adapter_parameters(unet, name) for name in names}
    return Adapters(spatial, params, lora_layers(unet), TEMPORAL if cfg.train_temporal_lora else None)


def _broadcast_from_main(adapters: Adapters, state) -> None:
    """Every process starts from the main process's LoRA weights (what DDP does on wrapping):
    their random inits differ once the main process has drawn random numbers while caching."""
    if state.num_processes == 1:
        return
    for params in adapters.params.values():
        for p in params:
            p.data = broadcast(p.data.contiguous(), from_process=0)


def _seed_per_process(cfg, state) -> None:
    """Process i draws its own noise, timesteps, skips and frames from seed + i (the setup before
    this point, caching and LoRA init, is the same in every process)."""
    if cfg.seed is not None and state.num_processes > 1:
        set_seed(cfg.seed + state.process_index)


def _initial_lora_folder(cfg, name, spatial_names, resume_from):
    if resume_from is not None:
        return adapter_folder(resume_from, name, spatial_names)
    if not cfg.lora_path:
        return None
    # The original's key: every spatial LoRA starts from <lora_path>/spatial/lora/, the temporal
    # one from <lora_path>/temporal/lora/. A missing folder is an error (the original started
    # fresh without a word).
    folder = adapter_folder(Path(cfg.lora_path), name if name == TEMPORAL else spatial_names[0], spatial_names)
    if not folder.is_dir():
        raise UserError(f"lora_path: {folder} not found; lora_path must hold spatial/lora/ and temporal/lora/ "
                        "of an earlier run (or set lora_path to '' to start fresh)")
    return folder


def make_optimisers(cfg, adapters: Adapters) -> Optimisers:
    optimizer_cls = _optimizer_class(cfg.use_8bit_adam)
    # One fused kernel for the hundreds of small LoRA tensors (CPU too: 1.2 ms vs 9.5 ms a step).
    fused = {"fused": True} if optimizer_cls is torch.optim.AdamW else {}
    optimizers, schedulers = {}, {}
    for name, params in adapters.params.items():
        optimizers[name] = optimizer_cls(
            params,
            **fused,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )
        schedulers[name] = get_scheduler(
            cfg.lr_scheduler,
            optimizer=optimizers[name],
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=cfg.max_train_steps,
        )
    return Optimisers(optimizers, schedulers)


def _optimizer_class(use_8bit_adam: bool):
    if not use_8bit_adam:
        return torch.optim.AdamW
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError("use_8bit_adam: true needs bitsandbytes (pip install bitsandbytes) or set it to false") from None
    return bnb.optim.AdamW8bit


def prepare_denoiser(cfg, components) -> None:
    """Attention backend, gradient checkpointing at the base's default granularity, train mode."""
    base, denoiser = components.base, components.denoiser
    xformers = cfg.enable_xformers_memory_efficient_attention and not cfg.enable_torch_2_attn
    base.set_attention_backend(denoiser, xformers=xformers)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(denoiser, base.checkpoint_targets(denoiser, base.default_granularity))
    denoiser.train()


class TrainingLoop:
    """The training loop; holds what every step needs."""

    def __init__(self, cfg, accelerator, components, adapters, optimisers, items, run_dir):
        self.cfg, self.acc, self.c = cfg, accelerator, components
        self.adapters, self.optimisers, self.items, self.run_dir = adapters, optimisers, items, Path(run_dir)
        self.prompts = PromptCache(components, accelerator.device)
        self.prompts(sorted({item["prompt"] for item in items}))  # all before the first step
        self.settings = StepSettings(
            train_spatial=cfg.train_spatial_lora,
            appearance_debias=cfg.appearance_debiased_loss,
            train_temporal=cfg.train_temporal_lora,
            random_hflip_img=cfg.random_hflip_img,
            use_offset_noise=cfg.use_offset_noise and not cfg.rescale_schedule,
            offset_noise_strength=cfg.offset_noise_strength,
            loss_scale=1.0 / cfg.gradient_accumulation_steps,
        )
        use_scaler = cfg.mixed_precision == "fp16" and accelerator.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.stop_signal = None

    def resume(self, checkpoint: Path) -> int:
        """Optimisers, LR schedulers, grad scaler and RNG of `checkpoint` (adapters are loaded already)."""
        state = load_training_state(checkpoint)
        self.optimisers.load_state_dict(state["optimisers"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        rngs = state.get("rng_per_process") or [state["rng"]]
        if len(rngs) != self.acc.num_processes:
            logger.warning("resuming %d processes from a checkpoint of %d: random draws will differ from "
                           "an uninterrupted run", self.acc.num_processes, len(rngs))
        set_rng_state(rngs[self.acc.process_index % len(rngs)])
        logger.info("resumed from %s at step %d", checkpoint, state["step"])
        return state["step"]

    def train(self, start_step: int) -> None:
        cfg = self.cfg
        self._install_signal_handlers()
        bar = tqdm(range(start_step, cfg.max_train_steps), initial=start_step, total=cfg.max_train_steps,
                   desc="Steps", disable=not self.acc.is_local_main_process)
        step, last_item = start_step, None
        try:
            for step in range(start_step + 1, cfg.max_train_steps + 1):
                started = time.perf_counter()
                losses, last_item = self.optimisation_step(step)
                # One terminal write a step: the update draws the new postfix (a refresh each was two).
                bar.set_postfix(loss_s=_fmt(losses.spatial), loss_t=_fmt(losses.temporal), refresh=False)
                bar.update(1)
                self._log(step, losses, time.perf_counter() - started)
                self.after_step(step, last_item)
                if self._any_process(self.stop_signal is not None):  # Ctrl-C reaches one or all
                    self.stop_signal = self.stop_signal or "a stop signal in another process"
                    raise StopRequested
        except StopRequested:
            logger.warning("received %s: saving checkpoint-%d and stopping", self.stop_signal, step)
            self._checkpoint(step)
            return
        finally:
            bar.close()
        if self.acc.is_main_process:
            save_final(self.run_dir, step, self.c.base, self.c.denoiser, self.adapters.spatial, self.adapters.temporal is not None)
            logger.info("saved final adapters of step %d in %s", step, self.run_dir)

    def optimisation_step(self, step: int):
        """One update: the micro-steps' forward/backward passes, then every optimiser; (mean losses, last item)."""
        total, trained_on = _Losses(), []
        for micro in range(self.cfg.gradient_accumulation_steps):
            item = self._item_for(step, micro)
            losses = self._micro_step(item)
            total.add(losses)
            trained_on.append(self._spatial_name(item))
        self._check_finite(total, step)
        self._sync_gradients()
        names = [n for n, ps in self.adapters.params.items() if any(p.grad is not None for p in ps)]
        schedulers = self._trained_clips(trained_on) + ([TEMPORAL] if self.adapters.temporal else [])
        self.optimisers.step(names, schedulers, self.adapters.params, self.scaler, self.cfg.max_grad_norm)
        return total.mean(), item

    def _trained_clips(self, local: list[str]) -> list[str]:
        """The spatial LoRAs whose clip any process trained on this step: every process steps the
        same LR schedulers, so their learning rates stay equal."""
        local = [n for n in local if n is not None]  # None: no spatial path
        if self.acc.num_processes == 1:
            return list(dict.fromkeys(local))
        names = self.adapters.spatial
        mask = torch.tensor([float(n in local) for n in names], device=self.acc.device)
        mask = self.acc.reduce(mask, reduction="sum")
        return [n for n, used in zip(names, mask.tolist()) if used]

    def _spatial_name(self, item: dict) -> str | None:
        """The clip's own spatial LoRA (or the shared one; None without a spatial path)."""
        spatial = self.adapters.spatial
        if not spatial:
            return None
        return spatial[0] if len(spatial) == 1 else spatial[item["index"]]

    def _log(self, step: int, losses, seconds: float) -> None:
        """Losses, learning rates and step time for TensorBoard/wandb (a no-op without a tracker)."""
        values = {"step_time_s": seconds}
        if losses.spatial is not None:
            values["loss_spatial"] = losses.spatial
        if losses.temporal is not None:
            values["loss_temporal"] = losses.temporal
        for name, scheduler in self.optimisers.schedulers.items():
            values[f"lr_{name}"] = scheduler.get_last_lr()[0]
        self.acc.log(values, step=step)

    def _item_for(self, step: int, micro: int) -> dict:
        """Shuffled order, reshuffled each epoch from the seed, sharded across processes (resumable)."""
        n = len(self.items)
        per_epoch = max(n // self.acc.num_processes, 1)
        index = ((step - 1) * self.cfg.gradient_accumulation_steps + micro)
        epoch, offset = divmod(index, per_epoch)
        generator = torch.Generator().manual_seed((self.cfg.seed or 0) + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        shard = order[self.acc.process_index :: self.acc.num_processes] or order
        return self.items[shard[offset % len(shard)]]

    def _micro_step(self, item: dict):
        latents, frame_latents, pixels = self._latents(item)
        embeddings = self.prompts([item["prompt"]])  # already on the training device
        return train_step(
            self.c, latents, embeddings, self.adapters, self._spatial_name(item), self.settings,
            backward=self._backward, autocast=self.acc.autocast, pixel_values=pixels, frame_latents=frame_latents,
        )

    def _latents(self, item):
        """(clip latents, per-frame image latents or None, pixels for flips or None), batched."""
        device = self.acc.device
        pixels = item.get("pixel_values")
        pixels = pixels[None].to(device) if pixels is not None and self.cfg.random_hflip_img > 0 else None
        frames_needed = self.adapters.spatial and not self.c.base.frames_are_images
        if item.get("lazy"):
            clip = item["pixel_values"][None].to(device)
            latents = self.c.encode_video(clip).float()
            frame_latents = self.c.encode_frames(clip).float() if frames_needed else None
        else:
            latents = item["latents"][None].to(device, torch.float32)
            frame_latents = item["frame_latents"][None].to(device, torch.float32) if frames_needed else None
        return latents, frame_latents, pixels

    def _backward(self, loss):
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _sync_gradients(self):
        """Average LoRA gradients across processes (the UNet is not wrapped in DDP: paths alternate)."""
        if self.acc.num_processes > 1:
            average_gradients(self.adapters.params, lambda t: self.acc.reduce(t, reduction="sum"), self.acc.device)

    def _check_finite(self, losses, step):
        """Stop on a NaN/inf loss in any process (all stop together: none waits in a collective)."""
        bad = [(name, value) for name, value in (("spatial", losses.spatial_sum), ("temporal", losses.temporal_sum))
               if value is not None and not math.isfinite(value)]
        if not self._any_process(bool(bad)):
            return
        name, value = bad[0] if bad else ("training", "not finite in another process")
        raise UserError(
            f"the {name} loss became {value} at step {step}; stopped without saving it "
            "(the last good checkpoint is kept). Lower learning_rate or use mixed_precision: bf16/no"
        )

    def _any_process(self, flag: bool) -> bool:
        if self.acc.num_processes == 1:
            return flag
        flags = torch.tensor([float(flag)], device=self.acc.device)
        return self.acc.reduce(flags, reduction="sum").item() > 0

    def after_step(self, step: int, item: dict) -> None:
        """Checkpoint and validation previews when their step comes (the profiler hooks in here)."""
        if step % self.cfg.checkpointing_steps == 0:
            self._checkpoint(step)
        vd = self.cfg.validation_data
        if vd.sample_preview and step % self.cfg.validation_steps == 0 and self.acc.is_main_process:
            log_validation(self.cfg, self.c, self.adapters, item, self.run_dir / SAMPLES_DIR, step, self.acc)

    def _checkpoint(self, step: int) -> None:
        # Every process's RNG, so that a resumed run draws what each process would have drawn.
        rngs = gather_object([rng_state()]) if self.acc.num_processes > 1 else [rng_state()]
        if not self.acc.is_main_process:
            return
        state = {"step": step, "optimisers": self.optimisers.state_dict(), "rng": rngs[0], "rng_per_process": rngs,
                 "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None}
        path = save_checkpoint(
            self.run_dir, step, self.c.base, self.c.denoiser, self.adapters.spatial, self.adapters.temporal is not None, state
        )
        logger.info("saved %s", path)

    def _install_signal_handlers(self):
        def request_stop(signum, _frame):
            self.stop_signal = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, request_stop)
            except ValueError:  # not the main thread (e.g. inside a web demo): no handler
                pass


def average_gradients(params: dict, reduce_sum, device) -> None:
    """Each adapter's gradient becomes the mean over the processes that used it this step.

    An adapter no process used keeps no gradient, so its optimiser does not step (no weight decay
    on a clip nobody trained on); one that only some processes used is divided by their number,
    not by all processes (a clip's spatial LoRA trained in one process keeps its full gradient).
    """
    names = list(params)
    used = torch.tensor([any(p.grad is not None for p in params[n]) for n in names],
                        dtype=torch.float32, device=device)
    used = reduce_sum(used)
    for name, users in zip(names, used.tolist()):
        if not users:
            continue
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params[name]])
        flat = reduce_sum(flat) / users  # one collective per adapter, not per tensor
        for p, grad in zip(params[name], flat.split([p.numel() for p in params[name]])):
            p.grad = grad.view_as(p)


class _Losses:
    def __init__(self):
        self.spatial_sum, self.temporal_sum, self.n_spatial, self.n_temporal = None, None, 0, 0

    def add(self, losses):
        if losses.spatial is not None:
            self.spatial_sum = (self.spatial_sum or 0.0) + losses.spatial
            self.n_spatial += 1
        if losses.temporal is not None:
            self.temporal_sum = (self.temporal_sum or 0.0) + losses.temporal
            self.n_temporal += 1

    def mean(self):
        from utils.training.step import StepLosses

        return StepLosses(
            spatial=None if self.spatial_sum is None else self.spatial_sum / self.n_spatial,
            temporal=None if self.temporal_sum is None else self.temporal_sum / self.n_temporal,
        )


def _fmt(value):
    return "-" if value is None else f"{value:.4f}"
