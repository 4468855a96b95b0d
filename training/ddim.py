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
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor


@dataclass(frozen=True)
class DDIMStep:
    """One DDIM transition x_t -> x_{t-1} per sample, as a Gaussian.

    Attributes:
        mean: Shape (B, C, H, W).
        std: Standard deviation of each sample's elements, shape (B,); 0 when eta = 0 or at a
            final step with ``set_alpha_to_one``.
        pred_x0: The model's prediction of x_0 from x_t, shape (B, C, H, W).
        timesteps: t, shape (B,).
        prev_timesteps: t - T / num_inference_steps, shape (B,); negative at the last step.
    """

    mean: Tensor
    std: Tensor
    pred_x0: Tensor
    timesteps: Tensor
    prev_timesteps: Tensor


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Shape (B,) -> (B, 1, 1, 1) in `like`'s dtype, for broadcasting over latents."""
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def predict_x0(
    scheduler: DDIMScheduler | DDPMScheduler, model_output: Tensor, sample: Tensor, timesteps: Tensor
) -> tuple[Tensor, Tensor]:
    """Predicted x_0 and noise from a model output, as ``DDIMScheduler.step`` computes them.

    Args:
        scheduler: Supplies ``alphas_cumprod``, ``prediction_type`` and ``clip_sample``.
        model_output: Shape (B, C, H, W).
        sample: x_t, shape (B, C, H, W).
        timesteps: t, shape (B,).

    Returns:
        (x0_hat, eps_hat), each shaped like `sample`; x0_hat is clipped when the scheduler's
        ``clip_sample`` is set (eps_hat is not, as in diffusers).
    """
    if scheduler.config.thresholding:
        raise ValueError("dynamic thresholding is not supported: its x0 depends on the batch statistics")
    alphas = scheduler.alphas_cumprod.to(sample.device)
    alpha_t = _per_sample(alphas[timesteps.to(sample.device)], sample)
    beta_t = 1 - alpha_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        pred_x0, pred_eps = (sample - beta_t.sqrt() * model_output) / alpha_t.sqrt(), model_output
    elif kind == "v_prediction":
        pred_x0 = alpha_t.sqrt() * sample - beta_t.sqrt() * model_output
        pred_eps = alpha_t.sqrt() * model_output + beta_t.sqrt() * sample
    elif kind == "sample":
        pred_x0, pred_eps = model_output, (sample - alpha_t.sqrt() * model_output) / beta_t.sqrt()
    else:
        raise ValueError(f"unknown prediction_type {kind!r}; expected epsilon, v_prediction or sample")
    if scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        pred_x0 = pred_x0.clamp(-limit, limit)
    return pred_x0, pred_eps


def _prev_timesteps(scheduler: DDIMScheduler, timesteps: Tensor) -> Tensor:
    return timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def _alpha_prev(scheduler: DDIMScheduler, prev_timesteps: Tensor) -> Tensor:
    alphas = scheduler.alphas_cumprod.to(prev_timesteps.device)
    return torch.where(
        prev_timesteps >= 0, alphas[prev_timesteps.clamp(min=0)], scheduler.final_alpha_cumprod.to(alphas)
    )


def transition_std(scheduler: DDIMScheduler, timesteps: Tensor, eta: float) -> Tensor:
    """The standard deviation of the DDIM step from each t (eq. 16's sigma times eta), shape (B,).

    It depends only on the schedule, so it tells before sampling which steps can form a pool:
    0 when eta = 0, and at a final step with ``set_alpha_to_one``.
    """
    alphas = scheduler.alphas_cumprod.to(timesteps.device)
    alpha_t = alphas[timesteps]
    alpha_prev = _alpha_prev(scheduler, _prev_timesteps(scheduler, timesteps))
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    return eta * variance.sqrt()


def ddim_step(
    scheduler: DDIMScheduler, model_output: Tensor, sample: Tensor, timesteps: Tensor, eta: float
) -> DDIMStep:
    """The Gaussian of x_{t-1} given x_t, exactly as ``DDIMScheduler.step`` samples it.

    Samples may sit at different timesteps (a training batch of pairs from several steps).

    Args:
        scheduler: A DDIM scheduler after ``set_timesteps``.
        model_output: The (guided) model output at (x_t, t), shape (B, C, H, W).
        sample: x_t, shape (B, C, H, W).
        timesteps: t of each sample, from ``scheduler.timesteps``, shape (B,).
        eta: 0 is deterministic DDIM, 1 has DDPM's variance.

    Returns:
        The transitions' means, stds and predicted x_0.
    """
    timesteps = timesteps.to(sample.device)
    prev_timesteps = _prev_timesteps(scheduler, timesteps)
    alpha_prev = _alpha_prev(scheduler, prev_timesteps)
    pred_x0, pred_eps = predict_x0(scheduler, model_output, sample, timesteps)
    std = transition_std(scheduler, timesteps, eta)
    mean = _per_sample(alpha_prev.sqrt(), sample) * pred_x0 + _per_sample((1 - alpha_prev - std**2).sqrt(), sample) * pred_eps
    return DDIMStep(mean=mean, std=std, pred_x0=pred_x0, timesteps=timesteps, prev_timesteps=prev_timesteps)


def transition_log_prob(x_prev: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Log-density of x_{t-1} under N(mean, std^2 I), averaged over latent elements (as DDPO and SPO).

    Args:
        x_prev: Shape (B, C, H, W).
        mean: Shape (B, C, H, W).
        std: Per-sample standard deviation > 0, shape (B,).

    Returns:
        Shape (B,), float32.
    """
    std = _per_sample(std, x_prev.float())
    log_density = -((x_prev.float() - mean.float()) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, x_prev.ndim)))
