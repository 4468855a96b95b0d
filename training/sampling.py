"""UNet calls with classifier-free guidance, x0 predictions and VAE decoding, shared by SPO and the SPM recipe."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from torch import Tensor


@dataclass
class TextConditioning:
    """Prompt embeddings for B samples, with the empty prompt's for guidance.

    Attributes:
        hidden: Prompt hidden states, shape (B, L, D).
        empty_hidden: The empty prompt's, shape (B, L, D).
        pooled: SDXL pooled prompt embedding, shape (B, P); None for SD 1.x/2.x.
        empty_pooled: SDXL pooled embedding of the empty prompt, shape (B, P), or None.
        time_ids: SDXL micro-conditioning (original h, w, crop top, left, target h, w), shape (B, 6), or None.
    """

    hidden: Tensor
    empty_hidden: Tensor
    pooled: Tensor | None = None
    empty_pooled: Tensor | None = None
    time_ids: Tensor | None = None

    def select(self, index: Tensor) -> TextConditioning:
        """The conditioning of the samples at `index` (shape (N,)), e.g. to repeat a prompt per candidate."""
        return TextConditioning(*(None if value is None else value[index] for value in self._values()))

    def _values(self) -> tuple[Tensor | None, ...]:
        return (self.hidden, self.empty_hidden, self.pooled, self.empty_pooled, self.time_ids)


def guided_output(
    unet: torch.nn.Module, sample: Tensor, timesteps: Tensor, text: TextConditioning, guidance_scale: float
) -> Tensor:
    """The UNet output with classifier-free guidance: ``empty + scale * (prompt - empty)``.

    Args:
        unet: A UNet2DConditionModel (possibly wrapped by accelerate).
        sample: Noisy latents, shape (B, C, H, W).
        timesteps: Shape (B,).
        text: Conditioning of the B samples.
        guidance_scale: 1 evaluates the prompt only (one forward pass of B).

    Returns:
        Shape (B, C, H, W).
    """
    if guidance_scale == 1.0:
        added = None if text.pooled is None else {"text_embeds": text.pooled, "time_ids": text.time_ids}
        return unet(sample, timesteps, text.hidden, added_cond_kwargs=added).sample
    added = None
    if text.pooled is not None:
        added = {
            "text_embeds": torch.cat([text.empty_pooled, text.pooled]),
            "time_ids": torch.cat([text.time_ids, text.time_ids]),
        }
    both = unet(
        torch.cat([sample, sample]),
        torch.cat([timesteps, timesteps]),
        torch.cat([text.empty_hidden, text.hidden]),
        added_cond_kwargs=added,
    ).sample
    empty, prompted = both.chunk(2)
    return empty + guidance_scale * (prompted - empty)


@torch.no_grad()
def decode_images(vae: AutoencoderKL, latents: Tensor) -> list[Image.Image]:
    """Decodes latents (scaled as the UNet sees them) into RGB images.

    Args:
        vae: The pipeline's VAE.
        latents: Shape (N, C, h, w).

    Returns:
        N images of the VAE's output size.
    """
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(image)) for image in array]


@torch.no_grad()
def encode_images(vae: AutoencoderKL, pixels: Tensor) -> Tensor:
    """Encodes images into latents as the UNet sees them (posterior mean x scaling factor).

    Args:
        vae: The pipeline's VAE.
        pixels: Images in [-1, 1], shape (N, 3, H, W).

    Returns:
        Shape (N, C, H / 8, W / 8) for SD-family VAEs.
    """
    return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode() * vae.config.scaling_factor

