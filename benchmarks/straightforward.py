"""The straightforward configuration of each recipe, as the research code writes it (the baseline
of `training_speed` and `training_gpu`).

- DPO (`straightforward_dpo`): fp32, latents and text embeddings encoded again every step, a
  separate reference UNet (a copy, for LoRA too), winner, loser and both reference predictions as
  four UNet calls, the default AdamW and a host sync per step.
- SPO (`straightforward_spo_training`): the official SPO code's update. Its sampling is already
  what `training.spo` does (one UNet call over every chain's k candidates, each candidate's x0
  decoded and scored), so only the update differs: a separate reference UNet loaded from the
  base model, and the policy and the reference each called once for the winners' and once for the
  losers' transition from the same x_t (four guided UNet calls, where `training.spo` makes two),
  one optimizer step per ``pairs_per_update`` pairs as ours, with a host sync per step.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from training import dpo, spo
from training.config import DPOConfig, SPOConfig
from training.ddim import ddim_step, transition_log_prob
from training.features import Features
from training.lora import add_lora
from training.losses import denoising_error, diffusion_dpo_loss, spo_step_loss
from training.optim import warmup_schedule
from training.parts import Parts
from training.sampling import TextConditioning, guided_output
from training.spo import StepPairs, update_chunks

# --- the straightforward DPO step, as the research code writes it -------------------------------


def straightforward_losses(
    batch: dpo.Batch, unet: torch.nn.Module, reference: torch.nn.Module, noise_scheduler, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair DPO loss with four UNet calls: policy on winners, on losers, reference on each."""

    def error(model: torch.nn.Module, side: int) -> torch.Tensor:
        latents = batch.latents[side]
        noisy = noise_scheduler.add_noise(latents, batch.noise, batch.timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, batch.noise, batch.timesteps)
        else:
            target = batch.noise
        added = None
        if batch.pooled is not None:
            added = {"text_embeds": batch.pooled, "time_ids": batch.time_ids[side]}
        prediction = model(noisy, batch.timesteps, batch.hidden, added_cond_kwargs=added).sample
        return denoising_error(prediction, target)

    model_w, model_l = error(unet, 0), error(unet, 1)
    with torch.no_grad():
        ref_w, ref_l = error(reference, 0), error(reference, 1)
    return diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta)


@dataclass
class Trainer:
    """A DPO trainer taken apart for timing: ``batch(i)`` builds micro-batch i, ``loss(batch)`` is its
    mean loss (the UNet calls only), ``step(i)`` one optimizer step on micro-batch i."""

    unet: torch.nn.Module
    reference: torch.nn.Module | None
    batch: Callable[[int], dpo.Batch]
    loss: Callable[[dpo.Batch], torch.Tensor]
    step: Callable[[int], float | None]


def straightforward_dpo(cfg: DPOConfig, parts: Parts, pairs: list, device: torch.device) -> Trainer:
    """The straightforward fp32 trainer of ``cfg``; its step returns the loss as a Python float."""
    for module in (parts.vae, parts.text_encoder, parts.text_encoder_2):
        if module is not None:
            module.to(device)
    features = Features(parts, cfg.resolution, device)
    unet = parts.unet.to(device)
    reference = copy.deepcopy(unet).requires_grad_(False).eval()
    if cfg.mode == "full":
        unet.requires_grad_(True)
    else:
        add_lora(unet, cfg, device, torch.float32)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = warmup_schedule(optimizer, round(cfg.warmup_fraction * cfg.max_steps))

    def batch(i: int) -> dpo.Batch:
        positions = range(i * cfg.batch_size, (i + 1) * cfg.batch_size)
        return dpo.make_batch(pairs, features, parts.noise_scheduler, cfg, positions)

    def loss(batch: dpo.Batch) -> torch.Tensor:
        return straightforward_losses(batch, unet, reference, parts.noise_scheduler, cfg.beta)[0].mean()

    def step(i: int) -> float:
        value = loss(batch(i))
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
        return value.item()  # logged every step, as the research code does

    return Trainer(unet, reference, batch, loss, step)


# --- the straightforward SPO update, as the official SPO code writes it ----------------------------


def straightforward_spo_training(pretrained_model: str) -> Callable[..., dict[str, float]]:
    """A drop-in for `training.spo.train_on_pairs` (one process) that updates the way the official
    code does; its reference UNet is loaded from ``pretrained_model`` on the first call."""
    reference: list[UNet2DConditionModel] = []

    def train_on_pairs(
        unet: torch.nn.Module,
        base_unet: UNet2DConditionModel,
        optimizer: torch.optim.Optimizer,
        average: None,  # the official code keeps no weight average
        params: list[torch.nn.Parameter],
        pairs: StepPairs,
        text: TextConditioning,
        scheduler,
        cfg: SPOConfig,
        accelerator,
        step: int,
    ) -> dict[str, float]:
        if not reference:
            base = UNet2DConditionModel.from_pretrained(pretrained_model, subfolder="unet")
            reference.append(base.to(base_unet.device).requires_grad_(False).eval())
        if len(pairs) == 0:
            return {}
        sums = {"loss": 0.0, "implicit_accuracy": 0.0, "margin": 0.0, "clip_fraction": 0.0}
        chunks = update_chunks(len(pairs), len(pairs), cfg, step, accelerator)
        grad_norms = []
        for chunk in chunks:
            batch = pairs.take(chunk)
            batch_text = text.select(batch.chain)
            logp_w = _log_prob(unet, batch, batch.winner, batch_text, scheduler, cfg)
            logp_l = _log_prob(unet, batch, batch.loser, batch_text, scheduler, cfg)
            with torch.no_grad():
                ref_w = _log_prob(reference[0], batch, batch.winner, batch_text, scheduler, cfg)
                ref_l = _log_prob(reference[0], batch, batch.loser, batch_text, scheduler, cfg)
            loss, metrics = spo_step_loss(logp_w, logp_l, ref_w, ref_l, beta=cfg.beta, clip=cfg.clip_range)
            loss.mean().backward()
            grad_norms.append(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).item())
            optimizer.step()
            optimizer.zero_grad()
            sums["loss"] += loss.detach().sum().item()
            for name in ("implicit_accuracy", "margin", "clip_fraction"):
                sums[name] += metrics[name].item() * len(batch)
        return {
            **{name: value / len(pairs) for name, value in sums.items()},
            "grad_norm": sum(grad_norms) / len(chunks),
            "updates": len(chunks),
        }

    return train_on_pairs


def _log_prob(
    model: torch.nn.Module,
    pairs: StepPairs,
    next_sample: torch.Tensor,
    text: TextConditioning,
    scheduler,
    cfg: SPOConfig,
) -> torch.Tensor:
    """Log-density of ``next_sample`` as the transition from the pairs' x_t under ``model``: one guided UNet call."""
    output = guided_output(model, pairs.sample, pairs.timesteps, text, cfg.guidance_scale)
    move = ddim_step(scheduler, output.float(), pairs.sample.float(), pairs.timesteps, cfg.eta)
    return transition_log_prob(next_sample, move.mean, move.std)


@contextlib.contextmanager
def straightforward_update(enabled: bool, pretrained_model: str):
    """Within the block, SPO updates the way the official code does (`straightforward_spo_training`)."""
    ours = spo.train_on_pairs
    if enabled:
        spo.train_on_pairs = straightforward_spo_training(pretrained_model)
    try:
        yield
    finally:
        spo.train_on_pairs = ours
