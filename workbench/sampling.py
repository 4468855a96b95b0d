"""Sampling from a loaded pipeline: its prompt encoding, and the shared sampler (`training.sampling`) on its parts.

The text conditioning comes from the pipeline's own ``encode_prompt`` and, for SDXL, its
``_get_add_time_ids``. Denoising, pools, completions and decoding are `training.sampling`'s, the
very functions SPO training and the step-aware model's data use, with the latent size derived
from the pipeline's VAE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline
from PIL import Image
from torch import Tensor

from training import sampling
from training.sampling import StepPool, TextConditioning
from workbench.pipelines import SDPipeline


@torch.no_grad()
def encode_prompts(pipe: SDPipeline, prompts: Sequence[str], *, height: int, width: int) -> TextConditioning:
    """Encodes prompts, and the empty prompt for guidance, with the pipeline's own text encoder(s).

    Args:
        pipe: An SD or SDXL pipeline.
        prompts: B prompts.
        height, width: Image size in pixels (SDXL's size conditioning).

    Returns:
        The conditioning of the B prompts.
    """
    prompts = list(prompts)
    if not isinstance(pipe, StableDiffusionXLPipeline):
        hidden, empty = pipe.encode_prompt(
            prompt=prompts, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=True
        )
        return TextConditioning(hidden, empty)
    hidden, empty, pooled, empty_pooled = pipe.encode_prompt(
        prompt=prompts, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    time_ids = pipe._get_add_time_ids(
        (height, width),
        (0, 0),
        (height, width),
        dtype=hidden.dtype,
        text_encoder_projection_dim=int(pooled.shape[-1]),
    )
    return TextConditioning(
        hidden, empty, pooled, empty_pooled, time_ids.to(pipe.device).repeat(len(prompts), 1)
    )


def denoise(
    pipe: SDPipeline,
    scheduler: DDIMScheduler,
    text: TextConditioning,
    generators: Sequence[torch.Generator],
    *,
    height: int,
    width: int,
    guidance_scale: float,
    eta: float,
    pool_steps: Sequence[int] = (),
    k: int = 0,
) -> tuple[Tensor, list[StepPool]]:
    """`training.sampling.denoise` with the pipeline's UNet, for images of ``height`` x ``width`` pixels."""
    shape = sampling.latent_shape(pipe.unet, pipe.vae, height, width)
    return sampling.denoise(
        pipe.unet,
        scheduler,
        text,
        generators,
        shape=shape,
        guidance_scale=guidance_scale,
        eta=eta,
        pool_steps=pool_steps,
        k=k,
    )


def decode(pipe: SDPipeline, latents: Tensor, batch_size: int) -> list[Image.Image]:
    """`training.sampling.decode` with the pipeline's VAE, ``batch_size`` latents per call."""
    return sampling.decode(pipe.vae, latents, batch_size)
