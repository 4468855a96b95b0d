"""The denoising chain written out, diffusers-style: the UNet and a DDIM scheduler kept apart.

One implementation of everything that samples, shared by generation (`workbench.generation`),
SPO (`training.spo`) and the step-aware model's data (`training.spm`):
- `guided_output` / `predict_noise`: the UNet call with classifier-free guidance;
- `denoise`: B DDIM chains that, at chosen steps, branch into pools of k candidates for the next
  state (SPO's noisy-step pools, Liang et al. 2024): one DDIM mean from the chain's state, k
  independent noise draws, each candidate's predicted x0, and the chain continues from a
  candidate picked uniformly at random (the paper's step-wise resampler);
- `complete`: finishes states deterministically (DDIM eta 0), e.g. a pool's candidates;
- `decode` / `encode`: the VAE in the UNet's latent scale, honouring ``latents_mean`` /
  ``latents_std`` where the VAE has them.

Latent sizes always come from the models (`latent_shape`: the VAE's downsampling factor and the
UNet's channels), never from a constant: the toy VAE downsamples by 4, SD's by 8.

Every random draw of a chain comes from that chain's own CPU ``torch.Generator`` in a fixed
order, so a chain gives the same result alone or batched with others, on any device (up to
floating-point differences between batch sizes and devices).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image
from torch import Tensor

from training.ddim import ddim_step, predict_x0

if TYPE_CHECKING:
    from training.features import Features


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


def conditioning(features: Features, prompts: list[str], is_sdxl: bool, resolution: int) -> TextConditioning:
    """Prompt and empty-prompt embeddings of B samples from a recipe's frozen text encoders (`training.features.Features`),
    with SDXL's micro-conditioning when needed."""
    hidden, pooled = features.prompts(prompts)
    empty_hidden, empty_pooled = features.prompts([""] * len(prompts))
    time_ids = None
    if is_sdxl:
        # Uncropped images at the sampled resolution: (original h, w, crop top, left, target h, w).
        time_ids = torch.tensor(
            [[resolution, resolution, 0, 0, resolution, resolution]] * len(prompts), device=hidden.device
        )
        time_ids = time_ids.to(hidden.dtype)
    return TextConditioning(hidden, empty_hidden, pooled, empty_pooled, time_ids)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """How many pixels one latent spans per side: 2 per down block after the first (as diffusers' pipelines)."""
    return _scale_factor(vae.config)


def native_side(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> int:
    """Image side a model draws natively: the UNet's sample size times the VAE's factor, from their
    configs (``model.config``, or a ``config.json`` read as a dict, so nothing is loaded)."""
    return int(unet_config["sample_size"]) * _scale_factor(vae_config)


def _scale_factor(vae_config: Mapping[str, Any]) -> int:
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def latent_shape(unet: UNet2DConditionModel, vae: AutoencoderKL, height: int, width: int) -> tuple[int, int, int]:
    """(C, h, w) of the latents of an image of ``height`` x ``width`` pixels.

    Raises:
        ValueError: A side is not a multiple of the VAE's downsampling factor.
    """
    factor = vae_scale_factor(vae)
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % factor:
            raise ValueError(f"{name} must be a positive multiple of {factor} for this VAE, got {value}")
    return (unet.config.in_channels, height // factor, width // factor)


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
    return guided_outputs(unet, sample, timesteps, text, (guidance_scale,))[0]


def guided_outputs(
    unet: torch.nn.Module, sample: Tensor, timesteps: Tensor, text: TextConditioning, scales: Sequence[float]
) -> list[Tensor]:
    """`guided_output` at several guidance scales from one UNet call (the empty and prompted outputs are shared).

    Returns:
        One (B, C, H, W) output per scale, in order.
    """
    if all(scale == 1.0 for scale in scales):
        added = None if text.pooled is None else {"text_embeds": text.pooled, "time_ids": text.time_ids}
        return [unet(sample, timesteps, text.hidden, added_cond_kwargs=added).sample] * len(scales)
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
    return [empty + scale * (prompted - empty) for scale in scales]


@torch.no_grad()
def predict_noise(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    text: TextConditioning,
    latents: Tensor,
    timestep: int,
    guidance_scale: float,
) -> Tensor:
    """The UNet's guided output for ``latents`` at ``timestep``, in float32.

    Args:
        unet: The denoiser.
        scheduler: Supplies ``scale_model_input``.
        text: One row per latent.
        latents: x_t, shape (N, C, h, w), float32.
        timestep: t.
        guidance_scale: empty + scale * (prompt - empty); 1 evaluates the prompt only.

    Returns:
        The model output (noise, v or x0 per the scheduler's prediction type), (N, C, h, w).
    """
    return predict_noises(unet, scheduler, text, latents, timestep, (guidance_scale,))[0]


@torch.no_grad()
def predict_noises(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    text: TextConditioning,
    latents: Tensor,
    timestep: int,
    scales: Sequence[float],
) -> list[Tensor]:
    """`predict_noise` at several guidance scales from one UNet call (`guided_outputs`)."""
    # The first weight's dtype: diffusers' ``unet.dtype`` walks every module, 7 ms a call on the toy UNet.
    model_input = scheduler.scale_model_input(latents, timestep).to(next(unet.parameters()).dtype)
    timesteps = torch.full((len(latents),), timestep, device=latents.device)
    return [output.float() for output in guided_outputs(unet, model_input, timesteps, text, scales)]


@dataclass(frozen=True)
class StepPool:
    """k candidates for one state of each chain in a batch of B chains.

    Step s means the state after s of the n denoising steps. The candidates are k draws of that
    state from the same parent (the state after s - 1 steps): the DDIM mean computed once from
    the parent, plus ``std`` times independent noise.

    Attributes:
        step: s, in 1..n.
        parent_timestep: The parent's timestep: the t of the transition that drew the candidates.
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
    parent_timestep: int
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
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    text: TextConditioning,
    generators: Sequence[torch.Generator],
    *,
    shape: tuple[int, int, int],
    guidance_scale: float,
    eta: float,
    pool_steps: Sequence[int] = (),
    k: int = 0,
    x0_guidance_scale: float | None = None,
) -> tuple[Tensor, list[StepPool]]:
    """Runs B DDIM chains from fresh noise, branching into pools of k candidates at ``pool_steps``.

    Each chain draws, from its own generator and in this order: its initial noise; then per
    step either the step's noise (C, h, w), none when eta = 0, or, at a pool step, k noises
    (k, C, h, w) and the index of the candidate to continue from. The k candidates of all B
    chains share one UNet call, which gives both their predicted x0 and the next transition of
    the continued candidate.

    Args:
        unet: The denoiser.
        scheduler: A DDIM scheduler after ``set_timesteps``.
        text: One row per chain.
        generators: One CPU generator per chain.
        shape: (C, h, w) of one chain's latents, from `latent_shape`.
        guidance_scale: Classifier-free guidance scale.
        eta: DDIM noise level; pools need eta > 0.
        pool_steps: Steps s in 1..n after which to draw a pool (see `StepPool`).
        k: Candidates per pool.
        x0_guidance_scale: Guidance of the candidates' predicted x0 (what is judged), from the same
            UNet call as the chain's own step; None: ``guidance_scale``.

    Returns:
        The final latents (B, C, h, w), float32, and the pools in step order.
    """
    device = text.hidden.device
    timesteps = [int(t) for t in scheduler.timesteps]
    n = len(timesteps)
    if pool_steps and (eta <= 0 or k < 1):
        raise ValueError(f"pools need eta > 0 and k >= 1, got eta={eta}, k={k}")
    x0_scale = guidance_scale if x0_guidance_scale is None else x0_guidance_scale
    latents = _normal(generators, shape, device) * scheduler.init_noise_sigma
    pools: list[StepPool] = []
    output: Tensor | None = None  # the model output at (latents, t) when already computed for a candidate
    batch = len(generators)
    for i, t in enumerate(timesteps):
        if output is None:
            output = predict_noise(unet, scheduler, text, latents, t, guidance_scale)
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
            flat_output, judged_output = predict_noises(
                unet, scheduler, flat_text, flat, timesteps[s], (guidance_scale, x0_scale)
            )
            flat_x0, _ = predict_x0(scheduler, judged_output, flat, torch.full((batch * k,), timesteps[s]))
            pred_x0 = flat_x0.unflatten(0, (batch, k))
            output = flat_output.unflatten(0, (batch, k))[chosen]
        else:
            pred_x0, output = candidates, None
        pools.append(
            StepPool(
                step=s,
                parent_timestep=t,
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
def complete(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    text: TextConditioning,
    latents: Tensor,
    *,
    from_step: int,
    guidance_scale: float,
    eta: float = 0.0,
    generators: Sequence[torch.Generator] = (),
) -> Tensor:
    """Finishes states reached after ``from_step`` of the n steps; deterministic DDIM (eta 0) by default.

    A pool candidate completed with eta 0 shows the finished image its continuation leads to.

    Args:
        unet: The denoiser.
        scheduler: A DDIM scheduler after ``set_timesteps``.
        text: One row per state.
        latents: States after ``from_step`` steps, shape (N, C, h, w).
        from_step: s in 0..n; n returns the states as they are.
        guidance_scale: Classifier-free guidance scale.
        eta: DDIM noise level of the remaining steps.
        generators: With eta > 0, one CPU generator per state for its noise.

    Returns:
        Finished latents, shape (N, C, h, w), float32.
    """
    if eta > 0 and len(generators) != len(latents):
        raise ValueError(f"eta > 0 needs one generator per state: {len(generators)} for {len(latents)} states")
    latents = latents.float()
    for t in [int(t) for t in scheduler.timesteps][from_step:]:
        output = predict_noise(unet, scheduler, text, latents, t, guidance_scale)
        step = ddim_step(scheduler, output, latents, torch.full((len(latents),), t), eta)
        latents = step.mean
        if eta > 0:
            latents = latents + step.std.view(-1, 1, 1, 1) * _normal(generators, latents.shape[1:], latents.device)
    return latents


def unet_scale(vae: AutoencoderKL, like: Tensor) -> tuple[Tensor | float, Tensor | float]:
    """(shift, scale) that take the VAE's latents to the UNet's: ``unet = (vae - shift) * scale``.

    ``scaling_factor`` alone, or with the VAE's per-channel ``latents_mean`` / ``latents_std`` where
    its config has them (as (1, C, 1, 1) tensors on ``like``'s device and dtype).
    """
    factor = vae.config.scaling_factor
    if vae.config.latents_mean is None or vae.config.latents_std is None:
        return 0.0, factor
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
    return mean, factor / std


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: Tensor, batch_size: int | None = None) -> list[Image.Image]:
    """Decodes latents in the UNet's scale into RGB images, ``batch_size`` latents per VAE call.

    Args:
        vae: The pipeline's VAE.
        latents: Shape (N, C, h, w).
        batch_size: Bounds the decoder's memory; None decodes all at once.

    Returns:
        N images of (h x factor) x (w x factor) pixels (`vae_scale_factor`).
    """
    images: list[Image.Image] = []
    for chunk in latents.split(batch_size or max(1, len(latents))):
        z = chunk.to(vae.device, vae.dtype)
        shift, scale = unet_scale(vae, z)
        z = z / scale + shift
        pixels = vae.decode(z, return_dict=False)[0]
        pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        array = pixels.permute(0, 2, 3, 1).cpu().numpy()
        images.extend(Image.fromarray(np.ascontiguousarray(image)) for image in array)
    return images


@torch.no_grad()
def encode(vae: AutoencoderKL, pixels: Tensor) -> Tensor:
    """Encodes images into latents as the UNet sees them (posterior mean, scaled; inverse of `decode`).

    Args:
        vae: The pipeline's VAE.
        pixels: Images in [-1, 1], shape (N, 3, H, W).

    Returns:
        Shape (N, C, H / factor, W / factor) (`vae_scale_factor`).
    """
    z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    shift, scale = unet_scale(vae, z)
    return (z - shift) * scale
