"""The DDIM transition as a Gaussian, for step-level preference training (SPO, DDPO).

With eta > 0 a DDIM step from x_t draws x_{t-1} ~ N(mean, std^2 I) (Song et al. 2021, eq. 12):

    x0_hat = prediction of x_0 from the model output at (x_t, t)
    eps_hat = the matching noise prediction
    std    = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    mean   = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - std^2) * eps_hat

with a = the scheduler's cumulative alpha product. The functions here reproduce
``DDIMScheduler.step`` (prediction types, ``clip_sample``, the final alpha) but return the mean
and std instead of one sample, so a pool of candidates can share the mean and the density of a
candidate can be evaluated under another model's mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from torch import Tensor


@dataclass(frozen=True)
class DDIMStep:
    """One DDIM transition x_t -> x_{t-1} as a Gaussian.

    Attributes:
        mean: Shape (B, C, H, W).
        std: Standard deviation shared by every element (0 when eta = 0 or at a final step
            with ``set_alpha_to_one``).
        pred_x0: The model's prediction of x_0 from x_t, shape (B, C, H, W).
        timestep: t.
        prev_timestep: t - T / num_inference_steps; negative at the last step.
    """

    mean: Tensor
    std: float
    pred_x0: Tensor
    timestep: int
    prev_timestep: int


def predict_x0(scheduler: DDIMScheduler, model_output: Tensor, sample: Tensor, timestep: int) -> tuple[Tensor, Tensor]:
    """Predicted x_0 and noise from a model output, for the scheduler's prediction type.

    Args:
        scheduler: Supplies ``alphas_cumprod`` and ``prediction_type``.
        model_output: Shape (B, C, H, W).
        sample: x_t, shape (B, C, H, W).
        timestep: t.

    Returns:
        (x0_hat, eps_hat), each shaped like `sample`; x0_hat is not clipped.
    """
    alpha_t = scheduler.alphas_cumprod[timestep].item()
    beta_t = 1.0 - alpha_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (sample - beta_t**0.5 * model_output) / alpha_t**0.5, model_output
    if kind == "v_prediction":
        return alpha_t**0.5 * sample - beta_t**0.5 * model_output, alpha_t**0.5 * model_output + beta_t**0.5 * sample
    if kind == "sample":
        return model_output, (sample - alpha_t**0.5 * model_output) / beta_t**0.5
    raise ValueError(f"unknown prediction_type {kind!r}; expected epsilon, v_prediction or sample")


def ddim_step(scheduler: DDIMScheduler, model_output: Tensor, sample: Tensor, timestep: int, eta: float) -> DDIMStep:
    """The Gaussian of x_{t-1} given x_t, exactly as ``DDIMScheduler.step`` samples it.

    Args:
        scheduler: A DDIM scheduler after ``set_timesteps``.
        model_output: The (guided) model output at (x_t, t), shape (B, C, H, W).
        sample: x_t, shape (B, C, H, W).
        timestep: t, one of ``scheduler.timesteps``.
        eta: 0 is deterministic DDIM, 1 has DDPM's variance.

    Returns:
        The transition's mean, std and the predicted x_0.
    """
    if scheduler.config.thresholding:
        raise ValueError("dynamic thresholding is not supported: its x0 depends on the batch statistics")
    prev_timestep = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_t = scheduler.alphas_cumprod[timestep].item()
    alpha_prev = (
        scheduler.alphas_cumprod[prev_timestep].item() if prev_timestep >= 0 else float(scheduler.final_alpha_cumprod)
    )
    pred_x0, pred_eps = predict_x0(scheduler, model_output, sample, timestep)
    if scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        pred_x0 = pred_x0.clamp(-limit, limit)
    variance = (1.0 - alpha_prev) / (1.0 - alpha_t) * (1.0 - alpha_t / alpha_prev)
    std = eta * variance**0.5
    mean = alpha_prev**0.5 * pred_x0 + (1.0 - alpha_prev - std**2) ** 0.5 * pred_eps
    return DDIMStep(mean=mean, std=std, pred_x0=pred_x0, timestep=timestep, prev_timestep=prev_timestep)


def sample_candidates(step: DDIMStep, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Draws k candidates x_{t-1} per chain: the same mean, independent noise.

    Args:
        step: The transition from each chain's x_t.
        k: Candidates per chain.
        generator: Source of the noise (on the mean's device).

    Returns:
        Shape (B, k, C, H, W).
    """
    shape = (step.mean.shape[0], k, *step.mean.shape[1:])
    noise = torch.randn(shape, generator=generator, device=step.mean.device, dtype=step.mean.dtype)
    return step.mean[:, None] + step.std * noise


def pooled_ddim_step(
    scheduler: DDIMScheduler,
    model_output: Tensor,
    sample: Tensor,
    timestep: int,
    eta: float,
    k: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, DDIMStep]:
    """SPO's pool: k continuations of one denoising state (`ddim_step` + `sample_candidates`).

    Args:
        scheduler: A DDIM scheduler after ``set_timesteps``.
        model_output: The (guided) model output at (x_t, t), shape (B, C, H, W).
        sample: x_t, shape (B, C, H, W).
        timestep: t.
        eta: Must be > 0, or every candidate is the mean.
        k: Candidates per chain.
        generator: Source of the noise.

    Returns:
        Candidates of shape (B, k, C, H, W) and the transition they were drawn from.
    """
    step = ddim_step(scheduler, model_output, sample, timestep, eta)
    if step.std <= 0.0:
        raise ValueError(f"the DDIM step from t={timestep} is deterministic (std 0): a pool needs eta > 0")
    return sample_candidates(step, k, generator), step


def transition_log_prob(x_prev: Tensor, mean: Tensor, std: float) -> Tensor:
    """Log-density of x_{t-1} under N(mean, std^2 I), averaged over latent elements (as DDPO and SPO).

    Args:
        x_prev: Shape (B, C, H, W).
        mean: Shape (B, C, H, W).
        std: > 0.

    Returns:
        Shape (B,), float32.
    """
    log_density = -((x_prev.float() - mean.float()) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, x_prev.ndim)))
