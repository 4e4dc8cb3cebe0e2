"""What several tests share: the ZeroScope base's LoRA targets by adapter name (the tiny test model
is a ZeroScope-architecture pipeline)."""

from models.bases.zeroscope import ZeroScopeBase
from models.lora import path_of

ZEROSCOPE = ZeroScopeBase()


def lora_targets(unet, adapter_name: str) -> list[str]:
    """The linears adapter `adapter_name` ("temporal", "spatial", "spatial_<i>") adapts."""
    return ZEROSCOPE.lora_targets(unet, path_of(adapter_name))


def ddim_inversion(unet, scheduler, latents, text, num_steps):
    """The ZeroScope base's DDIM inversion of `latents` through `unet` under `scheduler`."""
    from models.bases import Components

    return ZEROSCOPE.invert(Components(ZEROSCOPE, None, None, None, unet, scheduler), latents, text, num_steps)
