"""Wan 2.1 text-to-video (diffusers `WanPipeline`): the WanTransformer3DModel DiT, a UMT5 text
encoder, the causal 3D AutoencoderKLWan, flow matching.

What differs from the UNet bases, and why:
* Frames: the VAE encodes a lone first frame, then groups of 4, so a clip has 4k+1 frames and a
  single frame is one latent frame; Wan 2.1's VAE compresses time by 4 (k+1 latent frames), a
  folder's VAE may say otherwise (`scale_factor_temporal`, read as WanPipeline does); sizes are
  multiples of 16 (8x VAE, 2x2 patches).
* Latent frame i of a clip mixes several pixel frames, so the spatial path trains on per-frame image
  latents (`frames_are_images = False`), each frame encoded alone as a one-frame video.
* LoRA layers: the DiT has no temporal layers; every block has self-attention (`attn1`, the only
  layer that mixes tokens, hence frames), cross-attention to the text (`attn2`) and a feed-forward
  (`ffn`), both per token. Which of them each path adapts is configurable (wan_layers.py).
* Flow matching: x_s = (1 - s) x0 + s n, the transformer predicts the velocity n - x0 and takes
  s * 1000 as its timestep; training draws s from a shifted logit-normal, sampling uses the
  folder's flow scheduler, the noise prior inverts a clip along the flow ODE with Euler steps.
* The text encoder (UMT5-XXL, ~11 GB in bf16) stays on the CPU (`text_encoder_on_cpu`): it visits
  the GPU only to encode a prompt, and each prompt's states are kept, so it never sits there
  during training steps.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from tqdm.auto import tqdm

from models.bases import wan_exports, wan_layers, wan_parts, wan_tiny
from models.bases.spec import Components, ExportFile, VideoBase
from models.fast_layers import cache_dtype
from utils.errors import UserError

logger = logging.getLogger(__name__)

SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
TEXT_LENGTH = 512  # the prompt length WanPipeline.__call__ encodes (max_sequence_length)
VAE_CHUNK = 4  # AutoencoderKLWan encodes a lone first frame, then groups of this many frames
VAE_FRAMES_PER_CHUNK = 8  # frames encoded as images in one VAE call
TINY_WIDTH = 256  # transformer width below which a folder is a test model (1.3B: 1536, 14B: 5120)
TEXT_STATES = "text_states"  # Components.extras key: prompt -> its UMT5 states, on the CPU
HOW_TO_LOAD_DIFFUSERS = """```python
import torch
from diffusers import WanPipeline

pipe = WanPipeline.from_pretrained("{model}", torch_dtype=torch.bfloat16).to("cuda")
pipe.load_lora_weights("temporal/export", weight_name="pytorch_lora_weights.safetensors")
video = pipe("<a new subject doing the motion>", num_frames=49, height=480, width=832).frames[0]
```"""
HOW_TO_LOAD_COMFYUI = ("Copy `comfyui_lora.safetensors` into `ComfyUI/models/loras/` and apply it with a\n"
                       "*LoraLoaderModelOnly* node to the Wan 2.1 T2V model (Wan's original key names, alpha = rank).")


class WanBase(VideoBase):
    name = "wan"
    label = "Wan 2.1 text-to-video (WanTransformer3DModel)"
    pipeline_classes = ("WanPipeline",)
    accepted_options = ("lora_layers",)
    latent_channels = 16
    vae_scale = 8
    size_multiple = 16
    default_fps = 16  # Wan's sample_fps
    hub_tags = ("text-to-video", "wan", "wan2.1")
    frames_are_images = False
    temporal_compression = 4  # Wan 2.1's VAE; `for_folder` reads a folder's own
    text_encoder_on_cpu = True
    vae_dtype = torch.float32  # diffusers recommends it for decoding quality (0.5 GB)
    checkpoint_granularities = ("block",)
    default_granularity = "block"
    archs = tuple(wan_parts.FULL_SIZE_TRANSFORMERS)
    inversion_steps = 50
    # Wan's own defaults at 480p (832x480, 50 steps, guidance 5), at the frame count the configs
    # train at: the noise prior needs the training clip's length.
    default_sampling = dict(width=832, height=480, num_frames=49, num_steps=50, guidance_scale=5.0)
    cuda_dtype = torch.bfloat16  # Wan's weights and the diffusers examples are bf16
    single_video_config = "config_wan_single_video.yaml"
    export_files = (
        ExportFile(wan_exports.DIFFUSERS_EXPORT, "diffusers (`WanPipeline.load_lora_weights`)", HOW_TO_LOAD_DIFFUSERS),
        ExportFile(wan_exports.COMFYUI_EXPORT, "ComfyUI (Wan's original key names)", HOW_TO_LOAD_COMFYUI),
    )

    # ------------------------------------------------------------------ sizes

    def check_frames(self, frames: int, what: str) -> None:
        if frames < 1 or (frames - 1) % VAE_CHUNK:
            nearest = max(1, round((frames - 1) / VAE_CHUNK) * VAE_CHUNK + 1)
            raise UserError(f"{what} must be 4k+1 (1, 5, 9, ..., 33, 49, 81) for {self.label}, got {frames}; "
                            f"nearest valid: {nearest}")

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_compression + 1

    def pixel_frames(self, latent_frames: int) -> int:
        return (latent_frames - 1) * self.temporal_compression + 1

    def for_folder(self, model_path: str) -> "WanBase":
        """The folder's VAE's temporal factor, where WanPipeline reads it (`scale_factor_temporal`; a
        config without the key has diffusers' default, 4). Wan 2.1's own VAE gives this base itself,
        as does a VAE config that cannot be read here (loading the folder reports that)."""
        try:
            config = AutoencoderKLWan.load_config(model_path, subfolder="vae")
        except OSError:
            return self
        factor = int(config.get("scale_factor_temporal") or 4)
        if factor == self.temporal_compression:
            return self
        if 2 ** sum(config.get("temperal_downsample", (False, True, True))) != factor:
            raise UserError(f"the VAE of {model_path} states scale_factor_temporal {factor}, which its "
                            f"temperal_downsample {config.get('temperal_downsample')} does not give; fix vae/config.json")
        folder_base = copy.copy(self)
        folder_base.temporal_compression = factor
        return folder_base

    def folder_sampling(self, model_path: str) -> dict:
        """The tiny test model (a transformer narrower than any real Wan) samples 64x64x9."""
        config = WanTransformer3DModel.load_config(model_path, subfolder="transformer")
        if config["num_attention_heads"] * config["attention_head_dim"] < TINY_WIDTH:
            return dict(self.default_sampling, width=64, height=64, num_frames=9)
        return dict(self.default_sampling)

    # ------------------------------------------------------------------ loading

    def check_folder(self, path: Path) -> None:
        missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
        if missing:
            raise UserError(f"{path} is not a diffusers Wan folder: missing {', '.join(m + '/' for m in missing)} "
                            "(clone e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers, or build the tiny test model with "
                            "`python -m utils.tools.tiny_model DIR --base wan`)")

    def check_options(self, model_index: dict, options: dict) -> None:
        """Wan 2.1 text-to-video only (Wan 2.2's two experts or TI2V timesteps are other models),
        and a valid `lora_layers` choice."""
        super().check_options(model_index, options)
        if (model_index.get("transformer_2") or [None])[0] is not None or model_index.get("boundary_ratio"):
            raise UserError("this is a Wan 2.2 two-expert model (transformer_2); only Wan 2.1 text-to-video "
                            "(e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers or -14B-Diffusers) is supported")
        if model_index.get("expand_timesteps"):
            raise UserError("this is Wan 2.2 TI2V (per-token timesteps); only Wan 2.1 text-to-video is supported")
        wan_layers.layer_choice(options.get("lora_layers"))

    def load(self, model_path: str, device, dtype: torch.dtype, options: dict | None = None) -> Components:
        """Tokenizer, UMT5 (kept on the CPU), the VAE in `vae_dtype` (float32: diffusers recommends it for
        decoding quality; 0.5 GB), the transformer in `dtype`, the folder's flow scheduler."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        options = options or {}
        tokenizer = AutoTokenizer.from_pretrained(model_path, subfolder="tokenizer")
        text_encoder = UMT5EncoderModel.from_pretrained(model_path, subfolder="text_encoder",
                                                        torch_dtype=wan_parts.text_encoder_dtype(dtype))
        vae = AutoencoderKLWan.from_pretrained(model_path, subfolder="vae", torch_dtype=self.vae_dtype)
        transformer = WanTransformer3DModel.from_pretrained(model_path, subfolder="transformer", torch_dtype=dtype)
        wan_layers.set_layer_choice(transformer, options.get("lora_layers"))
        scheduler = wan_parts.load_flow_scheduler(model_path)
        return Components(self, tokenizer, text_encoder, vae, self.prepare_denoiser(transformer), scheduler)

    # ------------------------------------------------------------------ text

    def tokenize(self, components: Components, prompts: list[str]) -> torch.Tensor:
        return wan_parts.token_ids(components.tokenizer, prompts, TEXT_LENGTH)[0]

    def encode_prompts(self, components: Components, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), 512, D) UMT5 states as WanPipeline makes them (zero after each prompt's
        tokens), on the CPU; each distinct prompt is encoded once per loaded model."""
        known = components.extras.setdefault(TEXT_STATES, {})
        missing = [p for p in dict.fromkeys(prompts) if p not in known]
        if missing:
            states = wan_parts.umt5_states(components.tokenizer, components.text_encoder, missing, TEXT_LENGTH,
                                           components.denoiser.device)
            known.update(zip(missing, states.cpu()))
        return torch.stack([known[p] for p in prompts])

    # ------------------------------------------------------------------ VAE

    @torch.no_grad()
    def encode_video(self, components: Components, pixels: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> (B, 16, (F-1)//4+1, H/8, W/8), normalised as Wan trains.

        The VAE reads a lone first frame, then groups of 4: trailing frames that do not fill a
        group (a short last chunk of a video) would be dropped by it anyway, so they are cut here.
        """
        usable = self.pixel_frames(self.latent_frames(pixels.shape[1]))
        video = pixels[:, :usable].permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W)
        return wan_parts.encode_normalised(components.vae, video)

    @torch.no_grad()
    def encode_frames(self, components: Components, pixels: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) -> (B, 16, F, h, w): each frame encoded alone, as a one-frame video."""
        batch, frames = pixels.shape[:2]
        images = pixels.flatten(0, 1).unsqueeze(2)  # (B*F, 3, 1, H, W)
        latents = torch.cat([wan_parts.encode_normalised(components.vae, chunk)
                             for chunk in images.split(VAE_FRAMES_PER_CHUNK)])
        return latents[:, :, 0].unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def decode_video(self, components: Components, latents: torch.Tensor) -> torch.Tensor:
        """(B, 16, f, h, w) -> (B, pixel_frames(f), H, W, 3) uint8 frames on the CPU."""
        vae = components.vae
        mean, std = wan_parts.latent_statistics(vae, latents.device)
        video = vae.decode((latents.float() * std + mean).to(vae.dtype)).sample  # (B, 3, F, H, W)
        video = ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu()

    # ------------------------------------------------------------------ the denoiser

    def prepare_denoiser(self, denoiser: torch.nn.Module) -> torch.nn.Module:
        return cache_dtype(denoiser)

    def predict(self, denoiser, noisy, timesteps, text):
        """The velocity prediction; `timesteps` are sigma * 1000, one per sample or one for all."""
        t = torch.as_tensor(timesteps, device=noisy.device, dtype=torch.float32)
        t = t.expand(noisy.shape[0]) if t.dim() == 0 else t
        return denoiser(noisy, t, encoder_hidden_states=text.to(noisy.device), return_dict=False)[0]

    def lora_targets(self, denoiser, path):
        return wan_layers.targets(denoiser, wan_layers.chosen_layers(denoiser)[path])

    def lora_targets_of_file(self, denoiser, path, file):
        return wan_layers.targets_of_file(denoiser, path, file) or self.lora_targets(denoiser, path)

    def checkpoint_targets(self, denoiser, granularity):
        self.check_granularity(granularity)
        return list(denoiser.blocks)

    def set_attention_backend(self, denoiser: torch.nn.Module, xformers: bool = False) -> str:
        """PyTorch SDPA (diffusers' native attention backend), or xformers when asked and usable."""
        if xformers:
            try:
                denoiser.set_attention_backend("xformers")
                return "xformers"
            except Exception as err:  # xformers missing or no CUDA: SDPA is as fast on torch 2
                logger.warning("xformers unavailable (%s); using PyTorch SDPA attention", str(err).splitlines()[0])
        return "sdpa"  # diffusers' default backend

    # ------------------------------------------------------------------ flow matching

    def default_scheduler(self):
        return wan_parts.flow_scheduler_of(wan_parts.SCHEDULER_CONFIG)

    def training_scheduler(self, scheduler, rescale_schedule: bool = False):
        if rescale_schedule:
            logger.warning("rescale_schedule has no effect on flow matching: sigma = 1 is pure noise already")
        return scheduler

    def draw_timesteps(self, scheduler, batch: int, device) -> torch.Tensor:
        """sigma * 1000 with sigma = shift(u), u ~ logit-normal(0, 1) and the folder's flow shift."""
        u = torch.sigmoid(torch.randn(batch, device=device))
        return wan_parts.shifted(u, wan_parts.flow_shift(scheduler)) * scheduler.config.num_train_timesteps

    def add_noise(self, scheduler, latents, noise, timesteps):
        sigma = wan_parts.sigma_of(timesteps, scheduler, latents.dim())
        return (1 - sigma) * latents + sigma * noise

    def target(self, scheduler, latents, noise, timesteps):
        return noise - latents

    def sampling_scheduler(self, scheduler, num_steps: int, device):
        """A fresh copy of the folder's scheduler (UniPC flow or FlowMatchEuler)."""
        fresh = type(scheduler).from_config(scheduler.config)
        fresh.set_timesteps(num_steps, device=device)
        return fresh

    @torch.no_grad()
    def invert(self, components: Components, latents: torch.Tensor, text: torch.Tensor, num_steps: int,
               progress: bool = False) -> torch.Tensor:
        """Clean latents -> the noise end (sigma = 1) along the flow ODE dx/dsigma = v(x, sigma).

        Euler steps upward on the shifted schedule sigma_i = shift(i / num_steps) that the flow
        scheduler samples on, each with the velocity at the step's start. The running latent
        stays float32; only the transformer's input takes its dtype.
        """
        sigmas = wan_parts.shifted(torch.linspace(0, 1, num_steps + 1), wan_parts.flow_shift(components.scheduler))
        scale = components.scheduler.config.num_train_timesteps
        denoiser = components.denoiser
        dtype = denoiser.dtype
        text = text.expand(latents.shape[0], -1, -1) if text.shape[0] != latents.shape[0] else text
        latent = latents.float().clone()
        for i in tqdm(range(num_steps), desc="Flow inversion", disable=not progress):
            velocity = self.predict(denoiser, latent.to(dtype), sigmas[i] * scale, text.to(dtype)).float()
            latent = latent + (sigmas[i + 1] - sigmas[i]) * velocity
        return latent

    # ------------------------------------------------------------------ tools

    def build_tiny(self, out_dir: Path, seed: int = 0) -> Path:
        """A tiny random WanPipeline folder, assembled from stock classes by the stock pipeline."""
        return wan_tiny.build_tiny_pipeline(Path(out_dir), seed)

    def export(self, state: dict[str, torch.Tensor], path: str, folder: Path) -> list[Path]:
        return wan_exports.write_exports(state, Path(folder))

    # ------------------------------------------------------------------ sizes for the benchmarks

    def architecture(self, arch: str) -> dict:
        if arch == "tiny":
            return {"denoiser": wan_tiny.TINY_TRANSFORMER, "vae": wan_tiny.TINY_VAE,
                    "text": (TEXT_LENGTH, wan_tiny.TINY_TRANSFORMER["text_dim"])}
        if arch not in self.archs:
            raise ValueError(f"unknown {self.name} arch {arch!r}; choose from {self.archs}")
        transformer = wan_parts.FULL_SIZE_TRANSFORMERS[arch]
        return {"denoiser": transformer, "vae": {}, "text": (TEXT_LENGTH, transformer["text_dim"])}

    def folder_architecture(self, model_path: str) -> dict:
        transformer = dict(WanTransformer3DModel.load_config(model_path, subfolder="transformer"))
        vae = dict(AutoencoderKLWan.load_config(model_path, subfolder="vae"))
        return {"denoiser": transformer, "vae": vae, "text": (TEXT_LENGTH, transformer["text_dim"])}

    def build_denoiser(self, config) -> torch.nn.Module:
        return self.prepare_denoiser(WanTransformer3DModel(**_init_args(config)))

    def build_vae(self, config) -> torch.nn.Module:
        return AutoencoderKLWan(**_init_args(config))

    def random_components(self, arch: str, device, dtype: torch.dtype) -> Components:
        """The full-size transformer and VAE with random weights, and a one-layer UMT5 of the real
        width as the text encoder (it is not on the GPU during steps; only its output size matters)."""
        sizes = self.architecture(arch)
        with torch.device(device):  # initialise on the GPU directly: minutes faster for 1.4B parameters
            transformer = self.build_denoiser(sizes["denoiser"])
            vae = self.build_vae(sizes["vae"])
        tokenizer = wan_tiny.word_tokenizer(TEXT_LENGTH)
        text_encoder = wan_tiny.stand_in_text_encoder(len(tokenizer), sizes["text"][1])
        for model in (transformer, vae, text_encoder):
            model.requires_grad_(False).eval()
        transformer.to(dtype)
        text_encoder.to(wan_parts.text_encoder_dtype(dtype))
        wan_layers.set_layer_choice(transformer, None)
        return Components(self, tokenizer, text_encoder, vae, transformer, self.default_scheduler())


def _init_args(config: dict) -> dict:
    """A saved config without its bookkeeping keys (`_class_name`, `_diffusers_version`, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}

