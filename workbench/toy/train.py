"""Trains the toy text-to-image model of the shapes world from scratch, reproducibly, on CPU.

Two stages on a pool of renders of the training captions: the AutoencoderKL first, then the UNet
together with the CLIP text encoder on the frozen autoencoder's latents. The result is saved as a
Stable-Diffusion-format pipeline (UNet and autoencoder in fp16, text encoder in fp32).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from reward_models.shapes import check, held_out_captions, render, train_captions
from training.optim import warmup_schedule
from workbench.threads import torch_threads
from workbench.toy.config import ToyTrainConfig
from workbench.toy.evaluate import evaluate_pipeline
from workbench.toy.model import (
    MAX_TOKENS,
    assemble_pipeline,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
)


@dataclass
class ToyTrainResult:
    """What a training run produced.

    Attributes:
        out_dir: the saved pipeline folder.
        seconds: wall time per stage (``render``, ``vae``, ``unet``, ``total``).
        evals: held-out evaluations during training, each with its UNet ``step``.
    """

    out_dir: Path
    seconds: dict[str, float]
    evals: list[dict]


def _images_to_tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def _render_pool(cfg: ToyTrainConfig) -> tuple[torch.Tensor, list[str]]:
    rng = np.random.default_rng(cfg.seed)
    captions = train_captions()
    chosen = [captions[i] for i in rng.integers(len(captions), size=cfg.pool_size)]
    images = [render(caption, cfg.image_size, rng) for caption in chosen]
    return _images_to_tensor(images), chosen


def _ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for avg, param in zip(average.parameters(), model.parameters(), strict=True):
            avg.lerp_(param, 1 - decay)


def _train_vae(cfg: ToyTrainConfig, images: torch.Tensor, generator: torch.Generator, bar: tqdm):
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg.image_size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    vae.train()
    for _ in range(cfg.vae_steps):
        batch = images[torch.randint(len(images), (cfg.vae_batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(latents).sample
        loss = F.mse_loss(recon, batch) + F.l1_loss(recon, batch) + cfg.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(stage="vae", loss=f"{loss.item():.4f}")
        bar.update()
    vae.eval()
    return vae


@torch.no_grad()
def _encode_pool(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for chunk in images.split(256):
        posterior = vae.encode(chunk).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def _reconstruction_accuracy(cfg: ToyTrainConfig, vae, n: int = 256) -> float:
    rng = np.random.default_rng(cfg.seed + 1)
    captions = [held_out_captions()[i] for i in rng.integers(len(held_out_captions()), size=n)]
    images = _images_to_tensor([render(caption, cfg.image_size, rng) for caption in captions])
    recon = vae.decode(vae.encode(images).latent_dist.mean).sample
    pixels = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return float(
        np.mean([all(check(Image.fromarray(p), c).values()) for p, c in zip(pixels, captions, strict=True)])
    )


def train_toy_model(cfg: ToyTrainConfig, out_dir: str | Path, progress: bool = True) -> ToyTrainResult:
    """Trains the toy model and saves it as a Stable-Diffusion-format pipeline.

    Renders ``pool_size`` images of training captions, trains the autoencoder on them, sets its
    ``scaling_factor`` to 1 / (std of the latents), then trains UNet and text encoder with the
    epsilon objective of the DDIM scheduler. The weight average (EMA) is saved (UNet and autoencoder
    in fp16) with ``save_pretrained(out_dir, safe_serialization=True)``, with ``training_config.json``
    and ``training_log.json``. The same config gives the same weights on the same machine and
    torch thread count.

    Args:
        cfg: the run's settings.
        out_dir: folder to write; existing files of the pipeline are overwritten.
        progress: show a tqdm progress bar over all optimisation steps.

    Returns:
        Where the model went, stage timings and the held-out evaluations made along the way.
    """
    with torch_threads(cfg.threads):
        return _train(cfg, Path(out_dir), progress)


def _train(cfg: ToyTrainConfig, out_dir: Path, progress: bool) -> ToyTrainResult:
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    generator = torch.Generator().manual_seed(cfg.seed)
    images, pool_captions = _render_pool(cfg)
    seconds["render"] = time.perf_counter() - start

    bar = tqdm(total=cfg.vae_steps + cfg.unet_steps, desc="toy model", unit="step", disable=not progress)
    vae = _train_vae(cfg, images, generator, bar)
    seconds["vae"] = time.perf_counter() - start - seconds["render"]
    recon_accuracy = _reconstruction_accuracy(cfg, vae)
    bar.write(
        f"autoencoder: oracle accuracy on reconstructions of held-out renders {recon_accuracy:.3f}",
        file=sys.stderr,
    )
    pipe, evals = _train_denoiser(cfg, vae, images, pool_captions, generator, bar)
    bar.close()
    seconds["unet"] = time.perf_counter() - start - seconds["render"] - seconds["vae"]

    out_dir.mkdir(parents=True, exist_ok=True)
    # The text encoder stays fp32: transformers loads weights in their saved dtype, and an fp16 text
    # encoder next to an fp32 UNet would break a plain from_pretrained on CPU. diffusers upcasts the rest.
    pipe.unet.half()
    pipe.vae.half()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    seconds["total"] = time.perf_counter() - start
    (out_dir / "training_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    log = {
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "vae_reconstruction_accuracy": round(recon_accuracy, 4),
        "evals": evals,
    }
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return ToyTrainResult(out_dir=out_dir, seconds=seconds, evals=evals)


def _train_denoiser(
    cfg: ToyTrainConfig,
    vae: AutoencoderKL,
    images: torch.Tensor,
    pool_captions: list[str],
    generator: torch.Generator,
    bar: tqdm,
) -> tuple[StableDiffusionPipeline, list[dict]]:
    """Trains UNet and text encoder on the frozen autoencoder's latents; returns the averaged pipeline."""
    vae.requires_grad_(False)
    latent_mean, latent_std = _encode_pool(vae, images)
    scaling = 1.0 / float(
        (latent_mean + latent_std * torch.randn(latent_mean.shape, generator=generator)).std()
    )
    vae.register_to_config(scaling_factor=scaling)

    tokenizer = build_tokenizer()
    token_ids = tokenizer(
        pool_captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    torch.manual_seed(cfg.seed + 1)
    text_encoder = build_text_encoder(len(tokenizer), cfg.text_width)
    unet = build_unet(cfg.image_size // 4, cfg.unet_width, cfg.text_width)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    scheduler = build_scheduler()
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    # Constant after warm-up, so a run of N steps is exactly the first N steps of a longer run with
    # the same seed: one long run's evaluations show what any shorter run would ship.
    lr_schedule = warmup_schedule(optimizer, cfg.warmup_steps)
    pipe = assemble_pipeline(vae, ema_text, tokenizer, ema_unet)
    held_out = held_out_captions()
    eval_captions = (
        held_out[:: len(held_out) // cfg.eval_captions][: cfg.eval_captions] if cfg.eval_captions else ()
    )
    evals: list[dict] = []

    def evaluate(step: int) -> None:
        if not eval_captions:
            return
        result = evaluate_pipeline(pipe, eval_captions, seeds=(0,))
        evals.append({"step": step, **{k: round(v, 4) for k, v in result.summary().items()}})
        accuracy = " ".join(f"{k} {v:.2f}" for k, v in result.accuracy.items())
        bar.write(f"step {step}: held-out overall {result.overall:.2f} {accuracy}", file=sys.stderr)

    unet.train()
    text_encoder.train()
    for step in range(cfg.unet_steps):
        index = torch.randint(len(images), (cfg.batch_size,), generator=generator)
        latents = (
            latent_mean[index]
            + latent_std[index] * torch.randn(latent_mean[index].shape, generator=generator)
        ) * scaling
        drop = torch.rand(cfg.batch_size, generator=generator) < cfg.empty_caption_prob
        ids = torch.where(drop[:, None], empty_ids, token_ids[index])
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=generator
        )
        prediction = unet(
            scheduler.add_noise(latents, noise, timesteps), timesteps, text_encoder(ids)[0]
        ).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        # Warm-up keeps the average from dragging the random initialisation through a short run.
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        bar.set_postfix(stage="unet", loss=f"{loss.item():.4f}")
        bar.update()
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.unet_steps:
            evaluate(step + 1)
    evaluate(cfg.unet_steps)
    return pipe, evals
