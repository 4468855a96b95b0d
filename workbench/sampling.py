"""The denoising chain written out: the UNet and a DDIM scheduler kept apart, diffusers-style.

`denoise` runs a batch of DDIM chains with classifier-free guidance and, at chosen steps,
branches each chain into a pool of k candidates for the next state (SPO's noisy-step pools,
Liang et al. 2024): one DDIM mean from the chain's state, k independent noise draws, and the
chain continues from one candidate picked uniformly at random. Each pool is returned whole
(parent state, mean, std, noise, candidates, their predicted x0), so a caller can check that the
candidates share their parent and their mean.

Every random draw of a chain comes from that chain's own CPU ``torch.Generator`` in a fixed
order, so a chain gives the same result alone or batched with others, on any device (up to
floating-point differences between batch sizes and devices).

The text conditioning comes from the pipeline's own ``encode_prompt`` and, for SDXL, its
``_get_add_time_ids``; the guided UNet call (`training.sampling`) and the DDIM transition and x0
prediction (`training.ddim`) are the ones SPO training uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline
from PIL import Image
from torch import Tensor

from training.ddim import ddim_step, predict_x0
from training.sampling import TextConditioning, guided_output
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


@torch.no_grad()
def predict_noise(
    pipe: SDPipeline,
    scheduler: DDIMScheduler,
    text: TextConditioning,
    latents: Tensor,
    timestep: int,
    guidance_scale: float,
) -> Tensor:
    """The UNet's guided output for ``latents`` at ``timestep`` (`training.sampling.guided_output`).

    Args:
        pipe: Supplies the UNet.
        scheduler: Supplies ``scale_model_input``.
        text: One row per latent.
        latents: x_t, shape (N, C, h, w), float32.
        timestep: t.
        guidance_scale: empty + scale * (prompt - empty); 1 evaluates the prompt only.

    Returns:
        The model output (noise, v or x0 per the scheduler's prediction type), (N, C, h, w), float32.
    """
    model_input = scheduler.scale_model_input(latents, timestep).to(pipe.unet.dtype)
    timesteps = torch.full((len(latents),), timestep, device=latents.device)
    return guided_output(pipe.unet, model_input, timesteps, text, guidance_scale).float()


@dataclass(frozen=True)
class StepPool:
    """k candidates for one state of each chain in a batch of B chains.

    Step s means the state after s of the n denoising steps. The candidates are k draws of that
    state from the same parent (the state after s - 1 steps): the DDIM mean computed once from
    the parent, plus ``std`` times independent noise.

    Attributes:
        step: s, in 1..n.
        timestep: The candidates' timestep: the one the UNet reads them at to predict x0, and 0
            at the last step, where the candidates are finished samples.
        parent: The state the candidates were drawn from, (B, C, h, w).
        mean: The DDIM mean of the step from ``parent``, (B, C, h, w).
        std: The DDIM standard deviation of each chain's step, (B,); > 0 when eta > 0.
        noise: Standard normal draws, (B, k, C, h, w).
        candidates: ``mean + std * noise`` per chain, (B, k, C, h, w).
        pred_x0: Each candidate's predicted clean latents (the candidates themselves at the last
            step): what a person or a step-aware scorer judges, (B, k, C, h, w).
        continued: Index of the candidate each chain continued from, (B,).
    """

    step: int
    timestep: int
    parent: Tensor
    mean: Tensor
    std: Tensor
    noise: Tensor
    candidates: Tensor
    pred_x0: Tensor
    continued: Tensor


def _normal(generators: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device) -> Tensor:
    """One standard normal draw of ``shape`` per chain, each from its own CPU generator."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


@torch.no_grad()
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
    """Runs B DDIM chains from fresh noise, branching into pools of k candidates at ``pool_steps``.

    Each chain draws, from its own generator and in this order: its initial noise; then per
    step either the step's noise (C, h, w), none when eta = 0, or, at a pool step, k noises
    (k, C, h, w) and the index of the candidate to continue from.

    Args:
        pipe: An SD or SDXL pipeline.
        scheduler: A DDIM scheduler after ``set_timesteps``.
        text: One row per chain.
        generators: One CPU generator per chain.
        height, width: Image size in pixels (a multiple of ``pipe.vae_scale_factor``).
        guidance_scale: Classifier-free guidance scale.
        eta: DDIM noise level; pools need eta > 0.
        pool_steps: Steps s in 1..n after which to draw a pool (see `StepPool`).
        k: Candidates per pool.

    Returns:
        The final latents (B, C, h, w), float32, and the pools in step order.
    """
    device = pipe.device
    timesteps = [int(t) for t in scheduler.timesteps]
    n = len(timesteps)
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents = _normal(generators, shape, device) * scheduler.init_noise_sigma
    pools: list[StepPool] = []
    output: Tensor | None = None  # the model output at (latents, t) when already computed for a candidate
    batch = len(generators)
    for i, t in enumerate(timesteps):
        if output is None:
            output = predict_noise(pipe, scheduler, text, latents, t, guidance_scale)
        step = ddim_step(scheduler, output, latents, torch.full((batch,), t), eta)
        std = step.std.view(-1, 1, 1, 1)
        s = i + 1
        if s not in pool_steps:
            noise = _normal(generators, shape, device) if eta > 0 else torch.zeros_like(step.mean)
            latents, output = step.mean + std * noise, None
            continue
        noise = _normal(generators, (k, *shape), device)
        candidates = step.mean[:, None] + std[:, None] * noise
        continued = torch.cat([torch.randint(k, (1,), generator=g) for g in generators])
        chosen = torch.arange(batch, device=device), continued.to(device)
        if s < n:
            flat = candidates.flatten(0, 1)
            flat_text = text.select(torch.arange(batch, device=device).repeat_interleave(k))
            flat_output = predict_noise(pipe, scheduler, flat_text, flat, timesteps[s], guidance_scale)
            flat_x0, _ = predict_x0(scheduler, flat_output, flat, torch.full((batch * k,), timesteps[s]))
            pred_x0 = flat_x0.unflatten(0, (batch, k))
            output = flat_output.unflatten(0, (batch, k))[chosen]
        else:
            pred_x0, output = candidates, None
        pools.append(
            StepPool(
                step=s,
                timestep=timesteps[s] if s < n else 0,
                parent=latents,
                mean=step.mean,
                std=step.std,
                noise=noise,
                candidates=candidates,
                pred_x0=pred_x0,
                continued=continued,
            )
        )
        latents = candidates[chosen]
    return latents, pools


@torch.no_grad()
def decode(pipe: SDPipeline, latents: Tensor, batch_size: int) -> list[Image.Image]:
    """Decodes latents to RGB images with the pipeline's VAE, ``batch_size`` at a time.

    Args:
        pipe: Supplies the VAE and the image post-processor.
        latents: (N, C, h, w), in the UNet's latent scale.
        batch_size: Latents per VAE call (bounds the decoder's memory).

    Returns:
        N PIL images.
    """
    vae = pipe.vae
    images: list[Image.Image] = []
    for chunk in latents.split(batch_size):
        z = chunk.to(vae.device, vae.dtype)
        if vae.config.latents_mean is not None and vae.config.latents_std is not None:
            mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
            std = torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
            z = z * std / vae.config.scaling_factor + mean
        else:
            z = z / vae.config.scaling_factor
        pixels = vae.decode(z, return_dict=False)[0]
        images.extend(pipe.image_processor.postprocess(pixels.float(), output_type="pil"))
    return images
