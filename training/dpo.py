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
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from training.config import DPOConfig
from training.data import PreferencePair, load_image, preference_pairs, snapshot_hash, stream_indices
from training.errors import TrainingError
from training.losses import denoising_error, diffusion_dpo_loss, sft_loss
from training.runs import DTYPES, Run, check_finite, replace_folder


class ModelLoadError(TrainingError, OSError):
    """The pretrained model is neither a usable local folder nor a reachable hub id."""


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
    run = Run.open(cfg.output_dir, cfg.to_dict(), accelerator)
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

    # Reference: a frozen copy taken before any update (full), or nothing at all for LoRA, whose
    # reference is the same UNet with its adapters disabled. SFT has no reference. The full
    # copy keeps the trained UNet's fp32 weights so that both compute the same function at step 0:
    # beta ~ 5000 turns even rounding-level error gaps into visible margins.
    reference = None
    if cfg.mode == "full":
        reference = copy.deepcopy(unet).requires_grad_(False).eval().to(device)
        unet.requires_grad_(True)
    else:
        add_lora(unet, cfg, device, weight_dtype)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    # In place, so that the unwrapped UNet (the LoRA reference, the saved weights) is the compiled one.
    if cfg.compile_unet:
        for model in (unet, reference):
            if model is not None:
                model.compile()

    # Optimizer and schedule: AdamW, linear warm-up from 0, then constant (official code). The fused
    # AdamW updates every parameter in one kernel instead of a loop over tensors.
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    warmup = round(cfg.warmup_fraction * cfg.max_steps)
    lr_scheduler = LambdaLR(optimizer, lambda done: min(1.0, (done + 1) / warmup) if warmup else 1.0)

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

    return save_final(base_unet, parts.is_sdxl, cfg, accelerator, run.path / "final")


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


@dataclass
class Parts:
    """The components of a Stable Diffusion (1.x/2.x) or SDXL pipeline that training uses."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    tokenizer_2: CLIPTokenizer | None
    text_encoder_2: CLIPTextModelWithProjection | None
    noise_scheduler: DDPMScheduler
    is_sdxl: bool


def load_parts(pretrained_model: str) -> Parts:
    """Loads the components of a diffusers pipeline from a local folder or a hub id.

    Args:
        pretrained_model: Folder with ``model_index.json``, or a hub id.

    Returns:
        The components; SDXL is recognised by its second text encoder.

    Raises:
        ModelLoadError: The model cannot be found or is not a UNet text-to-image pipeline.
    """
    try:
        index = DiffusionPipeline.load_config(pretrained_model)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"Cannot load pretrained model {pretrained_model!r}: it is not a folder with model_index.json "
            f"and not a reachable hub id ({e})"
        ) from e
    if "unet" not in index or "vae" not in index:
        raise ModelLoadError(
            f"{pretrained_model!r} is a {index.get('_class_name')}; Diffusion-DPO here needs a UNet pipeline "
            "of the Stable Diffusion 1.x/2.x or SDXL family"
        )
    is_sdxl = "text_encoder_2" in index
    load = {"pretrained_model_name_or_path": pretrained_model}
    return Parts(
        unet=UNet2DConditionModel.from_pretrained(**load, subfolder="unet"),
        vae=AutoencoderKL.from_pretrained(**load, subfolder="vae"),
        tokenizer=CLIPTokenizer.from_pretrained(**load, subfolder="tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(**load, subfolder="text_encoder"),
        tokenizer_2=CLIPTokenizer.from_pretrained(**load, subfolder="tokenizer_2") if is_sdxl else None,
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(**load, subfolder="text_encoder_2")
        if is_sdxl
        else None,
        noise_scheduler=DDPMScheduler.from_pretrained(**load, subfolder="scheduler"),
        is_sdxl=is_sdxl,
    )


class Features:
    """Turns pairs into VAE latents and prompts into text embeddings with the frozen encoders."""

    def __init__(self, parts: Parts, resolution: int, device: torch.device):
        self.parts, self.resolution, self.device = parts, resolution, device

    @torch.no_grad()
    def images(
        self, pairs: list[PreferencePair], flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encodes winners and losers into the VAE posterior.

        Args:
            pairs: B pairs.
            flips: Whether to mirror each image, bool, shape (2, B): winners, losers.

        Returns:
            The posterior's mean and std x scaling factor, each shape (2, B, C, h, w), winners first;
            and the SDXL time ids (original h, w, crop top, left, target h, w), shape (2, B, 6).
        """
        pixels, time_ids = [], []
        for path in [p.winner for p in pairs] + [p.loser for p in pairs]:
            image, original, crop = load_image(path, self.resolution)
            pixels.append(image)
            time_ids.append([*original, *crop, self.resolution, self.resolution])
        pixels = torch.stack(pixels)
        pixels = torch.where(flips.flatten()[:, None, None, None], pixels.flip(-1), pixels)
        vae = self.parts.vae
        posterior = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        scale = vae.config.scaling_factor
        return (
            (posterior.mean * scale).unflatten(0, (2, len(pairs))),
            (posterior.std * scale).unflatten(0, (2, len(pairs))),
            torch.tensor(time_ids, dtype=torch.float32).unflatten(0, (2, len(pairs))),
        )

    @torch.no_grad()
    def prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encodes prompts as the pipelines do.

        Args:
            prompts: B prompts.

        Returns:
            Hidden states, shape (B, L, D) (SDXL: both encoders' penultimate layers concatenated),
            and SDXL's pooled embedding of the second encoder, shape (B, P), else None.
        """
        parts = self.parts
        ids = self._tokens(parts.tokenizer, prompts)
        if not parts.is_sdxl:
            return parts.text_encoder(ids)[0], None
        hidden_1 = parts.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        out_2 = parts.text_encoder_2(self._tokens(parts.tokenizer_2, prompts), output_hidden_states=True)
        return torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1), out_2.text_embeds

    def _tokens(self, tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)


class CachedFeatures:
    """Latents and text embeddings computed once per snapshot and looked up by pair and prompt."""

    def __init__(self, cache: dict, pairs: list[PreferencePair]):
        self.cache = cache
        self.row = {pair.pair_id: i for i, pair in enumerate(pairs)}
        self.prompt_row = {prompt: i for i, prompt in enumerate(cache["prompts"])}

    def images(
        self, pairs: list[PreferencePair], flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Same as `Features.images`, from the cache; the std is None unless the cache holds it."""
        rows = torch.tensor([self.row[p.pair_id] for p in pairs])
        index = (rows[None, :], torch.arange(2)[:, None], flips.long())
        std = self.cache["std"]
        return (
            self.cache["latents"][index],
            None if std is None else std[index],
            self.cache["time_ids"][rows].transpose(0, 1),
        )

    def prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same as `Features.prompts`, from the cache."""
        rows = torch.tensor([self.prompt_row[p] for p in prompts])
        pooled = self.cache["pooled"]
        return self.cache["hidden"][rows], None if pooled is None else pooled[rows]


def cached_features(
    features: Features, pairs: list[PreferencePair], cfg: DPOConfig, accelerator: Accelerator
) -> CachedFeatures:
    """Loads the snapshot's feature cache, computing it on the main process the first time.

    The cache file's name is a hash of what its content depends on: the snapshot's content hash,
    the model, the resolution, whether mirrored images are needed, the text encoders' precision and
    whether the posterior's std is kept (``vae_latents``).
    """
    key = json.dumps(
        [
            snapshot_hash(cfg.dataset),
            cfg.pretrained_model,
            cfg.resolution,
            cfg.random_flip,
            cfg.mixed_precision,
            cfg.vae_latents,
        ]
    )
    cache_dir = cfg.cache_dir or cfg.output_dir / "cache"
    path = cache_dir / f"features-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if accelerator.is_main_process and not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        prompts = sorted({p.prompt for p in pairs} | {""})
        latents, stds, time_ids, hidden, pooled = [], [], [], [], []
        for start in range(0, len(pairs), cfg.batch_size):
            chunk = pairs[start : start + cfg.batch_size]
            views = [
                features.images(chunk, torch.full((2, len(chunk)), flip))
                for flip in ([False, True] if cfg.random_flip else [False])
            ]
            latents.append(torch.stack([mean for mean, _, _ in views], dim=2).transpose(0, 1).cpu())
            stds.append(torch.stack([std for _, std, _ in views], dim=2).transpose(0, 1).cpu())
            time_ids.append(views[0][2].transpose(0, 1))
        for start in range(0, len(prompts), cfg.batch_size):
            h, p = features.prompts(prompts[start : start + cfg.batch_size])
            hidden.append(h.cpu())
            pooled.append(None if p is None else p.cpu())
        cache = {
            "latents": torch.cat(latents),  # (N, 2, flips, C, h, w)
            "std": torch.cat(stds) if cfg.vae_latents == "sample" else None,  # as latents
            "time_ids": torch.cat(time_ids),  # (N, 2, 6)
            "prompts": prompts,
            "hidden": torch.cat(hidden),
            "pooled": None if pooled[0] is None else torch.cat(pooled),
        }
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(cache, tmp)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    # Loaded to the CPU first: torch.load cannot map to an indexed CPU device such as cpu:0.
    cache = torch.load(path, map_location="cpu")
    cache = {k: v.to(features.device) if isinstance(v, torch.Tensor) else v for k, v in cache.items()}
    return CachedFeatures(cache, pairs)


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
            base_unet.disable_adapters()
            try:
                ref_err = errors(base_unet)
            finally:
                base_unet.enable_adapters()
    model_err_w, model_err_l = model_err.chunk(2)
    ref_err_w, ref_err_l = ref_err.chunk(2)
    return diffusion_dpo_loss(model_err_w, model_err_l, ref_err_w, ref_err_l, cfg.beta)


def add_lora(unet: UNet2DConditionModel, cfg, device: torch.device, weight_dtype: torch.dtype) -> None:
    """Freezes ``unet`` and adds a trainable LoRA adapter (``cfg.lora_rank/alpha/targets``, seeded by ``cfg.seed``).

    Gaussian A and zero B: the adapter starts as the identity, so the policy equals the reference
    (adapters disabled) at step 0. Adapter weights stay float32 under mixed precision.
    """
    unet.requires_grad_(False).to(device, weight_dtype)
    torch.manual_seed(cfg.seed)
    unet.add_adapter(
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(cfg.lora_targets),
        )
    )
    cast_training_params(unet, dtype=torch.float32)


def save_final(
    unet: UNet2DConditionModel, is_sdxl: bool, cfg: DPOConfig, accelerator: Accelerator, folder: Path
) -> Path:
    """Writes the trained weights in a format diffusers loads, replacing ``folder`` atomically.

    LoRA and SFT: ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights(folder)``.
    Full: the whole pipeline with the trained UNet, for ``DiffusionPipeline.from_pretrained``.
    """

    def write(tmp: Path) -> None:
        if cfg.mode == "full":
            DiffusionPipeline.from_pretrained(cfg.pretrained_model, unet=unet.to(torch.float32)).save_pretrained(tmp)
        else:
            write_lora(unet, is_sdxl, tmp)

    return replace_folder(folder, write, accelerator)


def write_lora(unet: UNet2DConditionModel, is_sdxl: bool, folder: Path) -> None:
    """Writes the UNet's LoRA adapter as ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights``."""
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    pipeline_class = StableDiffusionXLPipeline if is_sdxl else StableDiffusionPipeline
    pipeline_class.save_lora_weights(
        folder,
        unet_lora_layers={name: tensor.float() for name, tensor in layers.items()},
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Diffusion-DPO training (see training.config.DPOConfig).")
    parser.add_argument("--config", type=Path, required=True, help="JSON file with DPOConfig options.")
    main(DPOConfig.from_json(parser.parse_args().config))
