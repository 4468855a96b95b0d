"""Step-aware preference optimization (SPO, Liang et al. 2024): online, step-level, LoRA.

Run in-process with ``main(SPOConfig(...), scorer)`` or on any number of devices with
``accelerate launch -m training.spo --config run.json`` (the scorer then comes from the
config's ``scorer`` spec).

Per round (one of ``max_steps``), each process samples ``prompts_per_step`` DDIM chains (eta > 0,
guidance) with the current LoRA model. After the warm-up steps, at every step whose t lies in the trained
range, k candidates x_{t-1} are drawn from the chain's x_t (same mean, independent noise); the
chain continues from a candidate chosen uniformly at random (the paper's step-wise resampler).
Chains and pools are `training.sampling.denoise`, the sampler generation uses too. The scorer
then judges each candidate's predicted x0 at t-1 (or, with ``step_judge`` completion, the finished
image of its deterministic completion); the best and the worst form a pair when the softmax of
their two scores differs by more than the threshold. Then the kept pairs are shuffled and split
into optimizer steps of ``pairs_per_update`` pairs per process (the official code's 10), each on
`training.losses.spo_step_loss` of its pairs' two transitions' log-densities under the LoRA model
and under the reference (the same UNet, adapters disabled). With ``ema_decay`` the run also keeps
a moving average of the LoRA weights, and that average is the LoRA it writes; ``lr_schedule``
decays the learning rate over the rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from reward_models.base import Scorer
from reward_models.spec import scorer_from_spec
from training.config import ConfigError, SPOConfig
from training.data import stream_indices
from training.ddim import ddim_step, transition_log_prob, transition_std
from training.features import Features
from training.lora import adapters_disabled, add_lora, write_lora
from training.losses import spo_step_loss
from training.optim import averaged
from training.parts import DTYPES, Parts, load_parts
from training.runs import Run, check_finite
from training.sampling import (
    StepPool,
    TextConditioning,
    complete,
    conditioning,
    decode,
    denoise,
    guided_output,
    latent_shape,
)

# A checkpoint's folder with the weight average (``ema_decay``) as a LoRA for ``pipe.load_lora_weights``.
AVERAGE = "average"


@dataclass
class StepPairs:
    """Kept pairs: two candidates x_{t-1} drawn from the same x_t, winner and loser.

    Attributes:
        sample: x_t, shape (N, C, h, w).
        timesteps: t, shape (N,).
        winner: The preferred x_{t-1}, shape (N, C, h, w).
        loser: The other one, shape (N, C, h, w).
        chain: Index of the chain (and so of its prompt) in the sampling batch, shape (N,).
    """

    sample: Tensor
    timesteps: Tensor
    winner: Tensor
    loser: Tensor
    chain: Tensor

    def __len__(self) -> int:
        return self.sample.shape[0]

    def take(self, index: slice | Tensor) -> StepPairs:
        """The pairs at `index` (a slice or a tensor of positions)."""
        return StepPairs(
            self.sample[index],
            self.timesteps[index],
            self.winner[index],
            self.loser[index],
            self.chain[index],
        )


def main(cfg: SPOConfig, scorer: Scorer | None = None) -> Path:
    """Trains a LoRA with SPO and saves it.

    Args:
        cfg: The run's config; rerunning with the same ``output_dir`` and config resumes.
        scorer: Judges the candidates; default: built from ``cfg.scorer``.

    Returns:
        ``<output_dir>/final`` with ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights``.
    """
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    device, weight_dtype = accelerator.device, DTYPES[cfg.mixed_precision]
    # The scorer and the prompts are checked before a run folder is made for them.
    if scorer is None:
        if not cfg.scorer:
            raise ConfigError("no scorer: pass a Scorer to main() or set the scorer spec")
        scorer = scorer_from_spec(cfg.scorer, device)
    prompts = cfg.prompt_list()
    run = Run.start(cfg.output_dir, cfg.to_dict(), accelerator)

    # Model: frozen pipeline parts; the UNet is trained through LoRA adapters only.
    parts = load_parts(cfg.pretrained_model)
    parts.text_encoder.to(device, weight_dtype)
    if parts.text_encoder_2 is not None:
        parts.text_encoder_2.to(device, weight_dtype)
    # The VAE stays in float32 as loaded: the SDXL VAE overflows in fp16 when decoding candidates.
    parts.vae.to(device)
    unet = parts.unet
    add_lora(unet, cfg, device, weight_dtype)

    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    base_unet = accelerator.unwrap_model(unet)
    average = EMAModel(params, decay=cfg.ema_decay) if cfg.ema_decay else None
    if average is not None:
        accelerator.register_for_checkpointing(average)
    schedule_name = "constant_with_warmup" if cfg.lr_schedule == "constant" and cfg.lr_warmup_rounds else cfg.lr_schedule
    schedule = get_scheduler(
        schedule_name, optimizer, num_warmup_steps=cfg.lr_warmup_rounds, num_training_steps=cfg.max_steps
    )
    if schedule_name != "constant":  # a constant rate has nothing to resume
        accelerator.register_for_checkpointing(schedule)
    step = (run.resume() or {"step": 0})["step"]

    def write_weights(folder: Path) -> None:
        with averaged(average, params):
            write_lora(base_unet, parts.is_sdxl, folder)

    write_average = (lambda checkpoint: write_weights(checkpoint / AVERAGE)) if average is not None else None

    features = Features(parts, cfg.resolution, device)
    scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)
    scheduler.set_timesteps(cfg.num_inference_steps)
    if not pool_steps(scheduler, cfg):
        raise ConfigError(
            f"no denoising step gets a pool: after {cfg.warmup_steps} warm-up steps the schedule has no t in "
            f"[{cfg.min_timestep}, {cfg.max_timestep}] (timesteps: {scheduler.timesteps.tolist()})"
        )
    progress = tqdm(
        total=cfg.max_steps, initial=step, desc="spo", disable=not accelerator.is_local_main_process
    )
    while step < cfg.max_steps:
        started = time.perf_counter()
        unet.eval()
        pairs, stats, text = sample_round(
            base_unet, parts, scheduler, features, prompts, scorer, cfg, step, accelerator
        )
        sampled = time.perf_counter()
        unet.train()
        step += 1
        learning_rate = schedule.get_last_lr()[0]
        metrics = train_on_pairs(
            unet, base_unet, optimizer, average, params, pairs, text, scheduler, cfg, accelerator, step
        )
        with warnings.catch_warnings():
            # The schedule counts rounds, also a first round that kept no pair and so made no update.
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before")
            schedule.step()

        elapsed = time.perf_counter() - started
        counts = accelerator.reduce(
            torch.tensor(list(stats.values()), dtype=torch.float64, device=device), "sum"
        )
        summed = dict(zip(stats, counts.tolist(), strict=True))
        record = {
            **metrics,
            **{name: value for name, value in summed.items() if name.startswith("pairs_t")},
            "pairs": summed["pairs"],
            "pools": summed["pools"],
            "kept_fraction": summed["pairs"] / summed["pools"],
            "score_mean": summed["score_sum"] / summed["scored"],
            "score_gap": summed["gap_sum"] / summed["pools"],
            "sample_s": sampled - started,
            "train_s": elapsed - (sampled - started),
            "pairs_per_s": summed["pairs"] / elapsed,
            "learning_rate": learning_rate,
        }
        run.log(step, record)
        progress.update()
        progress.set_postfix(pairs=int(summed["pairs"]), pairs_per_s=f"{record['pairs_per_s']:.2f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            run.save_checkpoint(step, {}, keep=cfg.keep_checkpoints, write=write_average)
    progress.close()

    return run.save_final(write_weights)


def sample_round(
    unet: UNet2DConditionModel,
    parts: Parts,
    scheduler: DDIMScheduler,
    features: Features,
    prompts: list[str],
    scorer: Scorer,
    cfg: SPOConfig,
    step: int,
    accelerator: Accelerator,
) -> tuple[StepPairs, dict[str, float], TextConditioning]:
    """One round's sampling on this process: its prompts, their chains and pools, and the judged pairs.

    Returns:
        The kept pairs, `judge_pools`'s counts and the chains' text conditioning.
    """
    # Prompts and noise depend only on (seed, step, process), so a resumed run repeats them.
    first = (step * accelerator.num_processes + accelerator.process_index) * cfg.prompts_per_step
    batch_prompts = [prompts[i] for i in stream_indices(len(prompts), cfg.seed, first, cfg.prompts_per_step)]
    text = conditioning(features, batch_prompts, parts.is_sdxl, cfg.resolution)
    generators = chain_generators(cfg.seed, step, accelerator.process_index, len(batch_prompts))
    with accelerator.autocast():
        pools = sample_pools(unet, parts, scheduler, text, generators, cfg)
        images, judged_at = candidate_images(pools, unet, parts, scheduler, text, cfg)
    pairs, stats = judge_pools(pools, images, judged_at, batch_prompts, scorer, cfg)
    return pairs, stats, text


def pool_steps(scheduler: DDIMScheduler, cfg: SPOConfig) -> tuple[int, ...]:
    """The chain steps s (1-based) that draw a pool: after the warm-up, t in the trained range, stochastic.

    Step s is the transition from ``scheduler.timesteps[s - 1]``.
    """
    timesteps = scheduler.timesteps
    stds = transition_std(scheduler, timesteps, cfg.eta).tolist()
    return tuple(
        i + 1
        for i, (t, std) in enumerate(zip(timesteps.tolist(), stds, strict=True))
        if i >= cfg.warmup_steps and cfg.min_timestep <= t <= cfg.max_timestep and std > 0
    )


def chain_generators(seed: int, step: int, process_index: int, n_chains: int) -> list[torch.Generator]:
    """One CPU generator per chain of a round, from (seed, step, process, chain) only, so a resumed run repeats them."""
    base = seed * 1_000_003 + step * 1009 + process_index
    return [torch.Generator().manual_seed(base * 10_007 + chain) for chain in range(n_chains)]


def sample_pools(
    unet: UNet2DConditionModel,
    parts: Parts,
    scheduler: DDIMScheduler,
    text: TextConditioning,
    generators: list[torch.Generator],
    cfg: SPOConfig,
) -> list[StepPool]:
    """One DDIM chain per generator with pools at `pool_steps` and the step-wise resampler (`training.sampling.denoise`).

    The latents have the size the VAE decodes to ``cfg.resolution`` pixels.
    """
    _, pools = denoise(
        unet,
        scheduler,
        text,
        generators,
        shape=latent_shape(unet, parts.vae, cfg.resolution, cfg.resolution),
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        pool_steps=pool_steps(scheduler, cfg),
        k=cfg.num_candidates,
        x0_guidance_scale=cfg.judge_guidance_scale,
    )
    return pools


@torch.no_grad()
def candidate_images(
    pools: list[StepPool],
    unet: UNet2DConditionModel,
    parts: Parts,
    scheduler: DDIMScheduler,
    text: TextConditioning,
    cfg: SPOConfig,
) -> tuple[list[Image.Image], list[int]]:
    """What the scorer judges for every candidate of every pool, pool-major, and the timestep it is judged at.

    ``step_judge`` x0: each candidate's decoded predicted x0, at the candidate's timestep (the
    paper, for a step-aware scorer). completion: the finished image of the candidate's
    deterministic (eta 0) completion, at t = 0: what a final-image scorer, or a person looking at
    completion previews, judges a continuation by.
    """
    n_chains, k = pools[0].candidates.shape[:2]
    if cfg.step_judge == "x0":
        latents = torch.cat([pool.pred_x0.flatten(0, 1) for pool in pools])
        timesteps = [pool.timestep for pool in pools for _ in range(n_chains * k)]
    else:
        candidate_text = text.select(torch.arange(n_chains, device=text.hidden.device).repeat_interleave(k))
        latents = torch.cat(
            [
                complete(
                    unet,
                    scheduler,
                    candidate_text,
                    pool.candidates.flatten(0, 1),
                    from_step=pool.step,
                    guidance_scale=cfg.guidance_scale,
                )
                for pool in pools
            ]
        )
        timesteps = [0] * len(latents)
    # The VAE decodes fastest on CPU in batches of about 32.
    return decode(parts.vae, latents, 32), timesteps


@torch.no_grad()
def judge_pools(
    pools: list[StepPool],
    images: list[Image.Image],
    timesteps: list[int],
    prompts: list[str],
    scorer: Scorer,
    cfg: SPOConfig,
) -> tuple[StepPairs, dict[str, float]]:
    """Scores every candidate's image and keeps each pool's best-worst pair when it is decisive.

    Args:
        pools: The pools of B chains (`sample_pools`).
        images: What is judged of each candidate, pool-major (`candidate_images`).
        timesteps: The timestep each image is judged at.
        prompts: The B chains' prompts, for the scorer.
        scorer: Judges the images.
        cfg: Run config (threshold, score scale).

    Returns:
        The kept pairs and counts: ``pairs``, ``pools``, ``pairs_t<t>`` per pool timestep,
        ``scored`` and ``score_sum`` (candidates and their scaled scores), ``gap_sum``
        (softmax gaps summed over pools).
    """
    stats = {"pairs": 0.0, "pools": 0.0, "scored": 0.0, "score_sum": 0.0, "gap_sum": 0.0}
    n_chains, k = pools[0].candidates.shape[:2]
    scores = scorer.score(images, [p for _ in pools for p in prompts for _ in range(k)], timesteps)
    scores = torch.from_numpy(np.asarray(scores, dtype=np.float64) * cfg.score_scale).view(
        len(pools), n_chains, k
    )

    kept: list[StepPairs] = []
    rows = torch.arange(n_chains)
    for pool, pool_scores in zip(pools, scores, strict=True):
        best, worst = pool_scores.argmax(dim=1), pool_scores.argmin(dim=1)
        # softmax(best, worst)[0] - softmax(best, worst)[1] = tanh((best - worst) / 2)
        gap = torch.tanh((pool_scores[rows, best] - pool_scores[rows, worst]) / 2)
        keep = gap > cfg.threshold
        if keep.any():
            device = pool.parent.device
            chains = rows[keep].to(device)
            kept.append(
                StepPairs(
                    sample=pool.parent[chains],
                    timesteps=torch.full((len(chains),), pool.parent_timestep, device=device),
                    winner=pool.candidates[chains, best[keep].to(device)],
                    loser=pool.candidates[chains, worst[keep].to(device)],
                    chain=chains,
                )
            )
        stats["pairs"] += int(keep.sum())
        stats["pools"] += n_chains
        stats[f"pairs_t{pool.parent_timestep}"] = float(keep.sum())
        stats["scored"] += pool_scores.numel()
        stats["score_sum"] += float(pool_scores.sum())
        stats["gap_sum"] += float(gap.sum())
    if not kept:
        empty = pools[0].parent[:0]
        return StepPairs(
            empty, torch.zeros(0, dtype=torch.long, device=empty.device), empty, empty, rows[:0]
        ), stats
    fields = [f.name for f in dataclasses.fields(StepPairs)]
    return StepPairs(**{name: torch.cat([getattr(p, name) for p in kept]) for name in fields}), stats


def train_on_pairs(
    unet: torch.nn.Module,
    base_unet: UNet2DConditionModel,
    optimizer: torch.optim.Optimizer,
    average: EMAModel | None,
    params: list[torch.nn.Parameter],
    pairs: StepPairs,
    text: TextConditioning,
    scheduler: DDIMScheduler,
    cfg: SPOConfig,
    accelerator: Accelerator,
    step: int,
) -> dict[str, float]:
    """The optimizer steps on the kept pairs of every process: shuffled, then one step per
    ``cfg.pairs_per_update`` pairs per process (the official code's), each on the mean SPO step loss.

    Processes keep different numbers of pairs, so every update's gradients are summed over its
    pairs, all-reduced by hand and divided by the update's global pair count, instead of DDP's
    per-process average; every process makes the same number of updates. `step` (1-based) seeds
    the shuffle and names the step in a non-finite error. `average`, when given, takes in the
    weights after every update.

    Returns:
        ``loss``, ``implicit_accuracy``, ``margin``, ``clip_fraction`` (pair-weighted means over the
        updates, each measured before its own update), ``grad_norm`` (mean over the updates) and
        ``updates``; empty when no process kept a pair (no update then).
    """
    total = accelerator.reduce(torch.tensor(float(len(pairs)), device=accelerator.device), "sum").item()
    if total == 0:
        return {}
    chunks = update_chunks(len(pairs), total, cfg, step, accelerator)
    sums = {"loss": 0.0, "implicit_accuracy": 0.0, "margin": 0.0, "clip_fraction": 0.0}
    grad_norms = []
    for chunk in chunks:
        count = accelerator.reduce(torch.tensor(float(len(chunk)), device=accelerator.device), "sum").item()
        for start in range(0, len(chunk), cfg.train_batch_size):
            batch = pairs.take(chunk[start : start + cfg.train_batch_size])
            batch_text = text.select(batch.chain)
            with torch.no_grad(), adapters_disabled(base_unet):
                reference = transition_densities(base_unet, batch, batch_text, scheduler, cfg, accelerator)
            with accelerator.no_sync(unet):
                logp_w, logp_l = transition_densities(unet, batch, batch_text, scheduler, cfg, accelerator)
                loss, metrics = spo_step_loss(logp_w, logp_l, *reference, beta=cfg.beta, clip=cfg.clip_range)
                accelerator.backward(loss.sum() / count)
            sums["loss"] += loss.detach().sum().item()
            for name in ("implicit_accuracy", "margin", "clip_fraction"):
                sums[name] += metrics[name].item() * len(batch)
        for p in params:
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            p.grad = accelerator.reduce(grad, "sum")
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm).item()
        # Under fp16 an infinite norm is the grad scaler's business: it skips the step.
        if cfg.mixed_precision != "fp16":
            check_finite(step, grad_norm=grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if average is not None:
            average.step(params)
        grad_norms.append(grad_norm)
    reduced = accelerator.reduce(torch.tensor(list(sums.values()), device=accelerator.device), "sum") / total
    metrics = dict(zip(sums, reduced.tolist(), strict=True))
    check_finite(step, loss=metrics["loss"])
    return {**metrics, "grad_norm": sum(grad_norms) / len(chunks), "updates": len(chunks)}


def update_chunks(
    n_local: int, n_total: float, cfg: SPOConfig, step: int, accelerator: Accelerator
) -> list[Tensor]:
    """This process's kept pairs shuffled (seeded by seed, step and process) and split into the
    round's updates: ceil(n_total / (pairs_per_update x processes)) of them on every process."""
    per_update = cfg.pairs_per_update * accelerator.num_processes if cfg.pairs_per_update else n_total
    shuffle = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 1009 + accelerator.process_index)
    order = torch.randperm(n_local, generator=shuffle).to(accelerator.device)
    return list(torch.tensor_split(order, math.ceil(n_total / per_update)))


def transition_densities(
    unet: torch.nn.Module,
    pairs: StepPairs,
    text: TextConditioning,
    scheduler: DDIMScheduler,
    cfg: SPOConfig,
    accelerator: Accelerator,
) -> tuple[Tensor, Tensor]:
    """Log-densities of the winners' and the losers' transitions from their x_t under `unet`.

    Returns:
        (logp_w, logp_l), each shape (N,), averaged over latent elements.
    """
    with accelerator.autocast():
        output = guided_output(unet, pairs.sample, pairs.timesteps, text, cfg.guidance_scale)
    step = ddim_step(scheduler, output.float(), pairs.sample.float(), pairs.timesteps, cfg.eta)
    return transition_log_prob(pairs.winner, step.mean, step.std), transition_log_prob(
        pairs.loser, step.mean, step.std
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="SPO training (see training.spo.SPOConfig).")
    parser.add_argument("--config", type=Path, required=True, help="JSON file with SPOConfig options.")
    main(SPOConfig.from_json(parser.parse_args().config))
