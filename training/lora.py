"""LoRA adapters on the UNet: added for training, written for ``pipe.load_lora_weights``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict


@contextmanager
def adapters_disabled(unet: UNet2DConditionModel) -> Iterator[UNet2DConditionModel]:
    """The UNet without its LoRA (the frozen base, the reference of DPO and SPO) inside the block."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def add_lora(unet: UNet2DConditionModel, cfg, device: torch.device, weight_dtype: torch.dtype) -> None:
    """Freezes ``unet`` and adds a trainable LoRA adapter (``cfg.lora_rank/alpha/targets``, seeded by ``cfg.seed``).

    Gaussian A and zero B: the adapter starts as the identity, so the policy equals the reference
    (adapters disabled) at step 0. Adapter weights stay float32 under mixed precision.
    """
    unet.requires_grad_(False).to(device, weight_dtype)
    torch.manual_seed(cfg.seed)
    unet.add_adapter(
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(cfg.lora_targets),
        )
    )
    cast_training_params(unet, dtype=torch.float32)


def write_lora(unet: UNet2DConditionModel, is_sdxl: bool, folder: Path) -> None:
    """Writes the UNet's LoRA adapter as ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights``."""
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    pipeline_class = StableDiffusionXLPipeline if is_sdxl else StableDiffusionPipeline
    pipeline_class.save_lora_weights(
        folder,
        unet_lora_layers={name: tensor.float() for name, tensor in layers.items()},
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
