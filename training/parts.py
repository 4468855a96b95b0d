"""The components of a Stable Diffusion (1.x/2.x) or SDXL pipeline that training uses, loaded
from a local folder or a hub id, and the weight dtype of the frozen ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from training.errors import TrainingError

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Weight dtype of frozen modules per ``mixed_precision`` setting (the recipes' configs)."""


class ModelLoadError(TrainingError, OSError):
    """A model could not be loaded: a missing folder, an unreachable hub id, or an unsupported class."""


@dataclass
class Parts:
    """The components of a Stable Diffusion (1.x/2.x) or SDXL pipeline that training uses."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    tokenizer_2: CLIPTokenizer | None
    text_encoder_2: CLIPTextModelWithProjection | None
    noise_scheduler: DDPMScheduler
    is_sdxl: bool


def load_parts(pretrained_model: str) -> Parts:
    """Loads the components of a diffusers pipeline from a local folder or a hub id.

    Args:
        pretrained_model: Folder with ``model_index.json``, or a hub id.

    Returns:
        The components; SDXL is recognised by its second text encoder.

    Raises:
        ModelLoadError: The model cannot be found or is not a UNet text-to-image pipeline.
    """
    try:
        index = DiffusionPipeline.load_config(pretrained_model)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"Cannot load pretrained model {pretrained_model!r}: it is not a folder with model_index.json "
            f"and not a reachable hub id ({e})"
        ) from e
    if "unet" not in index or "vae" not in index:
        raise ModelLoadError(
            f"{pretrained_model!r} is a {index.get('_class_name')}; training here needs a UNet pipeline "
            "of the Stable Diffusion 1.x/2.x or SDXL family"
        )
    is_sdxl = "text_encoder_2" in index
    load = {"pretrained_model_name_or_path": pretrained_model}
    return Parts(
        unet=UNet2DConditionModel.from_pretrained(**load, subfolder="unet"),
        vae=AutoencoderKL.from_pretrained(**load, subfolder="vae"),
        tokenizer=CLIPTokenizer.from_pretrained(**load, subfolder="tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(**load, subfolder="text_encoder"),
        tokenizer_2=CLIPTokenizer.from_pretrained(**load, subfolder="tokenizer_2") if is_sdxl else None,
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(**load, subfolder="text_encoder_2")
        if is_sdxl
        else None,
        noise_scheduler=DDPMScheduler.from_pretrained(**load, subfolder="scheduler"),
        is_sdxl=is_sdxl,
    )
