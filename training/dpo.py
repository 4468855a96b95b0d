"""Diffusion-DPO recipe (Wallace et al., CVPR 2024) and its SFT baseline, offline from a snapshot.

Run in-process with ``main(DPOConfig(...))`` or on any number of devices with
``accelerate launch -m training.dpo --config run.json``.

Per pair (winner w, loser l) and step: one timestep t ~ U[0, T) and one noise sample, shared by
w and l; the trained UNet and the frozen reference each predict the noise (or velocity) of both
noised latents, and `training.losses.diffusion_dpo_loss` compares their error gaps.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm

from training.config import DPOConfig
from training.data import PreferencePair, preference_pairs, stream_indices
from training.features import CachedFeatures, Features, cached_features
from training.lora import adapters_disabled, add_lora, write_lora
from training.losses import denoising_error, diffusion_dpo_loss, sft_loss
from training.optim import warmup_schedule
from training.parts import DTYPES, load_parts
from training.runs import Run, check_finite


def main(cfg: DPOConfig) -> Path:
    """Trains with Diffusion-DPO (or the SFT baseline) and saves the weights.

    Args:
        cfg: The run's config; rerunning with the same ``output_dir`` and config resumes.

    Returns:
        The folder with the final weights, ``<output_dir>/final``: LoRA weights for
        ``pipe.load_lora_weights(folder)`` (lora and sft modes) or a full pipeline for
        ``DiffusionPipeline.from_pretrained(folder)`` (full mode).
    """
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    run = Run.start(cfg.output_dir, cfg.to_dict(), accelerator)
    device, weight_dtype = accelerator.device, DTYPES[cfg.mixed_precision]

    # Data: decided pairs, winner first; ties are dropped as in the paper.
    pairs = preference_pairs(cfg.dataset)

    # Model: the frozen parts, and the UNet that is trained.
    parts = load_parts(cfg.pretrained_model)
    parts.text_encoder.to(device, weight_dtype)
    if parts.text_encoder_2 is not None:
        parts.text_encoder_2.to(device, weight_dtype)
    # The VAE only encodes training images; fp32 avoids the SDXL VAE's fp16 overflow.
    parts.vae.to(device, torch.float32)
    unet = parts.unet
    reference = trainable_unet(unet, cfg, device, weight_dtype)
    # In place, so that the unwrapped UNet (the LoRA reference, the saved weights) is the compiled one.
    if cfg.compile_unet:
        for model in (unet, reference):
            if model is not None:
                model.compile()

    # Optimizer and schedule: AdamW, linear warm-up from 0, then constant (official code). The fused
    # AdamW updates every parameter in one kernel instead of a loop over tensors.
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    lr_scheduler = warmup_schedule(optimizer, round(cfg.warmup_fraction * cfg.max_steps))

    # The scheduler is stepped here once per optimizer step rather than prepared, because
    # accelerate steps a prepared scheduler once per process.
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    base_unet = accelerator.unwrap_model(unet)

    # Resume after prepare so that the loaded states land in the prepared objects.
    train_state = run.resume() or {"step": 0, "micro_step": 0}
    step, micro_step = train_state["step"], train_state["micro_step"]

    features = Features(parts, cfg.resolution, device)
    if cfg.cache_latents:
        features = cached_features(features, pairs, cfg, accelerator)
        del parts.vae, parts.text_encoder, parts.text_encoder_2  # free their memory for training

    noise_scheduler = parts.noise_scheduler
    pairs_per_micro_step = cfg.batch_size * accelerator.num_processes
    progress = tqdm(
        total=cfg.max_steps, initial=step, desc=cfg.mode, disable=not accelerator.is_local_main_process
    )
    # Metrics stay on the device until the window is written: no host sync inside a step.
    window = MetricWindow(step)
    while step < cfg.max_steps:
        lr = lr_scheduler.get_last_lr()[0]
        sums: dict[str, torch.Tensor] = {}
        for _ in range(cfg.gradient_accumulation_steps):
            # This process's slice of the global batch; positions fix the pairs and their noise.
            first = micro_step * pairs_per_micro_step + accelerator.process_index * cfg.batch_size
            batch = make_batch(pairs, features, noise_scheduler, cfg, range(first, first + cfg.batch_size))
            with accelerator.accumulate(unet):
                loss, metrics = pair_losses(
                    batch, unet, base_unet, reference, noise_scheduler, cfg, accelerator
                )
                loss = loss.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            micro_step += 1
            for name, value in {"loss": loss.detach(), **metrics}.items():
                sums[name] = sums.get(name, 0.0) + value / cfg.gradient_accumulation_steps
        # A step the fp16 grad scaler skipped does not advance the schedule.
        if not optimizer.step_was_skipped:
            lr_scheduler.step()
        step += 1
        window.add(lr, {**sums, "grad_norm": grad_norm})
        progress.update()

        checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
        if checkpoint or step % cfg.log_every == 0:
            # The NaN guard runs here, before a checkpoint could keep non-finite weights.
            last = window.write(run, accelerator, pairs_per_micro_step * cfg.gradient_accumulation_steps, cfg)
            progress.set_postfix(loss=f"{last['loss']:.4f}", pairs_per_s=f"{last['pairs_per_s']:.1f}")
        if checkpoint:
            run.save_checkpoint(step, {"micro_step": micro_step}, keep=cfg.keep_checkpoints)
    progress.close()

    return save_final(base_unet, parts.is_sdxl, cfg, run)


@dataclass
class Batch:
    """One micro-batch of B pairs with their shared noise and timesteps."""

    latents: torch.Tensor  # (2, B, C, h, w): winners, losers
    time_ids: torch.Tensor  # (2, B, 6)
    hidden: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor | None  # (B, P), SDXL only
    noise: torch.Tensor  # (B, C, h, w)
    timesteps: torch.Tensor  # (B,)


def make_batch(
    pairs: list[PreferencePair],
    features: Features | CachedFeatures,
    noise_scheduler: DDPMScheduler,
    cfg: DPOConfig,
    positions: range,
) -> Batch:
    """Assembles the pairs at the given stream positions with their random choices.

    Every random choice of a pair (prompt dropout, flips, timestep, noise, posterior draw) comes
    from a generator seeded by the run seed and the pair's stream position, so a batch is the same
    however it is split over processes and accumulation steps, and after a resume.
    """
    indices = stream_indices(len(pairs), cfg.seed, positions.start, len(positions))
    chosen = [pairs[i] for i in indices]
    prompts, flips, timesteps, generators = [], [], [], []
    for position, pair in zip(positions, chosen, strict=True):
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + position)
        drop, flip = torch.rand(2, generator=generator).tolist()
        flip_loser = torch.rand(1, generator=generator).item() if cfg.flip_unit == "image" else flip
        prompts.append("" if drop < cfg.empty_prompt_dropout else pair.prompt)
        flips.append([cfg.random_flip and flip < 0.5, cfg.random_flip and flip_loser < 0.5])
        timesteps.append(torch.randint(noise_scheduler.config.num_train_timesteps, (1,), generator=generator))
        generators.append(generator)
    latents, std, time_ids = features.images(chosen, torch.tensor(flips).T)
    noise = torch.stack([torch.randn(latents.shape[2:], generator=g) for g in generators]).to(latents.device)
    if cfg.vae_latents == "sample":
        draws = torch.stack([torch.randn(latents[:, 0].shape, generator=g) for g in generators], dim=1)
        latents = latents + std * draws.to(latents.device)
    hidden, pooled = features.prompts(prompts)
    return Batch(
        latents, time_ids.to(latents.device), hidden, pooled, noise, torch.cat(timesteps).to(latents.device)
    )


def trainable_unet(
    unet: torch.nn.Module, cfg: DPOConfig, device: torch.device, weight_dtype: torch.dtype
) -> torch.nn.Module | None:
    """Makes ``unet`` the trained model of ``cfg.mode`` and returns its frozen reference.

    The reference is a frozen copy taken before any update (full), or None: a LoRA's reference is
    the same UNet with its adapters disabled, and SFT has none. The full copy keeps the trained
    UNet's fp32 weights so that both compute the same function at step 0: beta ~ 5000 turns even
    rounding-level error gaps into visible margins.
    """
    reference = None
    if cfg.mode == "full":
        reference = copy.deepcopy(unet).requires_grad_(False).eval().to(device)
        unet.requires_grad_(True)
    else:
        add_lora(unet, cfg, device, weight_dtype)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return reference


def pair_losses(
    batch: Batch,
    unet: torch.nn.Module,
    base_unet: UNet2DConditionModel,
    reference: UNet2DConditionModel | None,
    noise_scheduler: DDPMScheduler,
    cfg: DPOConfig,
    accelerator: Accelerator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair DPO (or SFT) loss of one micro-batch.

    Args:
        batch: The micro-batch.
        unet: The trained UNet as prepared by accelerate.
        base_unet: The same UNet unwrapped; with adapters disabled it is the LoRA reference.
        reference: Frozen copy for full fine-tuning, else None.
        noise_scheduler: Gives the noising and the velocity target.
        cfg: Run config.
        accelerator: For autocast.

    Returns:
        Per-pair loss, shape (B,), and detached scalar metrics.
    """
    sides = 1 if cfg.mode == "sft" else 2  # SFT trains on winners only
    latents = batch.latents[:sides].flatten(0, 1)
    noise = batch.noise.repeat(sides, 1, 1, 1)
    timesteps = batch.timesteps.repeat(sides)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    hidden = batch.hidden.repeat(sides, 1, 1)
    added = None
    if batch.pooled is not None:
        added = {
            "text_embeds": batch.pooled.repeat(sides, 1),
            "time_ids": batch.time_ids[:sides].flatten(0, 1),
        }

    def errors(model: torch.nn.Module) -> torch.Tensor:
        with accelerator.autocast():
            prediction = model(noisy, timesteps, hidden, added_cond_kwargs=added).sample
        return denoising_error(prediction, target)

    model_err = errors(unet)
    if cfg.mode == "sft":
        return sft_loss(model_err)
    with torch.no_grad():
        if reference is not None:
            ref_err = errors(reference)
        else:
            with adapters_disabled(base_unet):
                ref_err = errors(base_unet)
    model_err_w, model_err_l = model_err.chunk(2)
    ref_err_w, ref_err_l = ref_err.chunk(2)
    return diffusion_dpo_loss(model_err_w, model_err_l, ref_err_w, ref_err_l, cfg.beta)


class MetricWindow:
    """Per-step metrics kept as device tensors until written, so that a step never waits on the host."""

    def __init__(self, step: int):
        self.start(step)

    def start(self, step: int) -> None:
        """Starts an empty window after optimizer step ``step``."""
        self.first_step, self.started = step + 1, time.perf_counter()
        self.lrs: list[float] = []
        self.steps: list[dict[str, torch.Tensor]] = []

    def add(self, lr: float, metrics: dict[str, torch.Tensor]) -> None:
        self.lrs.append(lr)
        self.steps.append(metrics)

    def write(
        self, run: Run, accelerator: Accelerator, pairs_per_step: int, cfg: DPOConfig
    ) -> dict[str, float]:
        """Reduces the window over processes (one sync), logs one line per step and starts a new window.

        Raises:
            NonFiniteError: naming the first step whose loss (or grad norm, except under fp16, where an
                infinite norm makes the grad scaler skip the step) is not finite.
        """
        names = sorted(self.steps[0])
        stacked = torch.stack([torch.stack([m[n].float() for n in names]) for m in self.steps])
        rows = accelerator.reduce(stacked.to(accelerator.device), "mean").tolist()
        pairs_per_s = pairs_per_step * len(rows) / (time.perf_counter() - self.started)
        for i, (lr, row) in enumerate(zip(self.lrs, rows, strict=True)):
            metrics = dict(zip(names, row, strict=True))
            guarded = {"loss": metrics["loss"]}
            if cfg.mixed_precision != "fp16":
                guarded["grad_norm"] = metrics["grad_norm"]
            check_finite(self.first_step + i, **guarded)
            metrics.update(lr=lr, pairs_per_s=pairs_per_s)
            run.log(self.first_step + i, metrics)
        self.start(self.first_step + len(rows) - 1)
        return metrics


def save_final(unet: UNet2DConditionModel, is_sdxl: bool, cfg: DPOConfig, run: Run) -> Path:
    """Writes the trained weights in a format diffusers loads as the run's ``final/`` folder.

    LoRA and SFT: ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights(folder)``.
    Full: the whole pipeline with the trained UNet, for ``DiffusionPipeline.from_pretrained``.
    """

    def write(tmp: Path) -> None:
        if cfg.mode == "full":
            DiffusionPipeline.from_pretrained(cfg.pretrained_model, unet=unet.to(torch.float32)).save_pretrained(tmp)
        else:
            write_lora(unet, is_sdxl, tmp)

    return run.save_final(write)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Diffusion-DPO training (see training.config.DPOConfig).")
    parser.add_argument("--config", type=Path, required=True, help="JSON file with DPOConfig options.")
    main(DPOConfig.from_json(parser.parse_args().config))
