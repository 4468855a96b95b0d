"""Implicit preference accuracy: how often a trained model's implicit Diffusion-DPO reward picks
the winner of a pair, relative to a reference model.

For a pair (winner w, loser l) noised with one shared (timestep, noise) draw, the policy prefers
w when it lowers w's denoising error more than l's relative to the reference: the sign of the
Diffusion-DPO margin ``-((e_w - e_l) - (r_w - r_l))`` (Wallace et al. 2024, eq. 14; beta > 0 only
scales it). A margin of exactly 0, as between identical models, counts half.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from training.data import PreferencePair
from training.features import Features
from training.losses import denoising_error


@torch.no_grad()
def implicit_accuracy(
    policy: UNet2DConditionModel,
    reference: UNet2DConditionModel,
    features: Features,
    noise_scheduler: DDPMScheduler,
    pairs: list[PreferencePair],
    *,
    seed: int = 0,
    repeats: int = 4,
    batch_size: int = 8,
) -> tuple[float, int]:
    """Share of (pair, draw) where the policy's implicit reward prefers the pair's winner.

    Every pair is scored at ``repeats`` (timestep, noise) draws, each shared by its two images
    and seeded by ``seed`` and the draw's position, so the result depends only on the models,
    the pairs and the seed.

    Args:
        policy: The trained UNet.
        reference: The UNet it is compared with (e.g. its parent).
        features: Encodes the pairs' images (VAE posterior mean, unflipped) and prompts.
        noise_scheduler: The training noise schedule (noising and the v-prediction target).
        pairs: The judged pairs, winner and loser as people decided.
        seed: Seed of the draws.
        repeats: Draws per pair.
        batch_size: Pairs per UNet call.

    Returns:
        The accuracy in [0, 1] (0.5: no preference either way) and the number of draws.
    """
    draws = [(pair, position) for position, pair in enumerate(pairs * repeats)]
    agree = 0.0
    for start in range(0, len(draws), batch_size):
        chunk = draws[start : start + batch_size]
        chosen = [pair for pair, _ in chunk]
        latents, _, time_ids = features.images(chosen, torch.zeros(2, len(chosen), dtype=torch.bool))
        hidden, pooled = features.prompts([pair.prompt for pair in chosen])
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + position) for _, position in chunk]
        steps = noise_scheduler.config.num_train_timesteps
        timesteps = torch.cat([torch.randint(steps, (1,), generator=g) for g in generators]).repeat(2)
        noise = torch.stack([torch.randn(latents.shape[2:], generator=g) for g in generators]).repeat(
            2, 1, 1, 1
        )
        clean, timesteps, noise = (
            latents.flatten(0, 1),
            timesteps.to(latents.device),
            noise.to(latents.device),
        )
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = noise
        added = None
        if pooled is not None:
            added = {
                "text_embeds": pooled.repeat(2, 1),
                "time_ids": time_ids.flatten(0, 1).to(latents.device),
            }
        hidden = hidden.repeat(2, 1, 1)
        errors = [
            denoising_error(unet(noisy, timesteps, hidden, added_cond_kwargs=added).sample, target).chunk(2)
            for unet in (policy, reference)
        ]
        (policy_w, policy_l), (ref_w, ref_l) = errors
        margin = -((policy_w - policy_l) - (ref_w - ref_l))
        agree += float((margin > 0).sum() + 0.5 * (margin == 0).sum())
    return agree / len(draws), len(draws)
