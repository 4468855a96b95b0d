"""Training the step-aware preference model (SPM) of SPO from a dataset snapshot.

Run in-process with ``main(SPMConfig(...))`` or with
``accelerate launch -m training.spm --config run.json``.

By default the model learns from final-image preferences only, as SPO's SPM does: both images
of a final pair are encoded by the base model's VAE, noised to the same t ~ U[0, T) with the same
noise, the base UNet predicts x0 (with guidance), which is decoded and scored at t (SPO,
section 4.2). Step pairs (kind ``step``, images that already are predicted x0s at their
``timestep``, scored at it) enter only when ``step_pairs`` admits them: a label given to a blurry
intermediate image brings back the judge that cannot see where a chain is heading, so by default
only labels about finished images teach the model.
Loss: `training.losses.pairwise_preference_loss` over the two scores, ties as 0.5 / 0.5.
Accuracy is reported per timestep bucket, on the training batches and on held-out prompts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from accelerate import Accelerator
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm
from transformers import CLIPProcessor

from reward_models.clip import load_clip
from reward_models.step_aware import CONFIG_NAME, StepAwareCLIP
from training.config import ConfigError, SPMConfig
from training.data import SnapshotError, read_pairs, stream_indices
from training.ddim import predict_x0
from training.features import EncodedOnce, Features
from training.losses import pairwise_preference_loss
from training.optim import warmup_schedule
from training.parts import DTYPES, Parts, load_parts
from training.runs import Run, check_finite
from training.sampling import conditioning, decode, guided_output


@dataclass
class Row:
    """One pair of the snapshot, with the timestep it is scored at."""

    prompt: str
    image_0: Path
    image_1: Path
    label_0: float
    timestep: int
    is_step: bool


def main(cfg: SPMConfig) -> Path:
    """Trains the SPM and saves it.

    Args:
        cfg: The run's config; rerunning with the same ``output_dir`` and config resumes.

    Returns:
        ``<output_dir>/final``, a folder for ``StepAwareScorer.from_pretrained`` (or the spec ``spm:PATH``).
    """
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    run = Run.start(cfg.output_dir, cfg.to_dict(), accelerator)
    device = accelerator.device

    # Data: every final pair with a consensus, ties included (fitted by equal scores), and the
    # step pairs cfg.step_pairs admits; split by prompt.
    table = select_pairs(read_pairs(cfg.dataset), cfg.step_pairs)
    held_out = pl.Series(
        [is_held_out(p, cfg.eval_fraction, cfg.seed) for p in table["prompt"]], dtype=pl.Boolean
    )
    train_table, eval_table = table.filter(~held_out), table.filter(held_out)
    if train_table.is_empty():
        raise ConfigError(
            f"no training pairs left in {cfg.dataset} after holding out {cfg.eval_fraction:.0%} of prompts"
        )

    # Base diffusion model: frozen, only turns final pairs into predicted x0s.
    parts = load_parts(cfg.pretrained_model)
    weight_dtype = DTYPES[cfg.mixed_precision]
    for module in (parts.unet, parts.text_encoder, parts.text_encoder_2):
        if module is not None:
            module.requires_grad_(False).to(device, weight_dtype).eval()
    parts.vae.requires_grad_(False).to(device).eval()  # float32: SDXL's VAE overflows in fp16
    features = Features(parts, cfg.resolution, device)
    num_train_timesteps = parts.noise_scheduler.config.num_train_timesteps

    # The SPM: a fresh modulation around a clean CLIP, or a saved SPM to continue.
    if (Path(cfg.reward_model) / CONFIG_NAME).is_file():
        model, processor = StepAwareCLIP.from_pretrained(cfg.reward_model, device=device)
    else:
        clip, processor = load_clip(cfg.reward_model, cfg.processor, device=device)
        # The modulation's hidden MLP is drawn from torch's global generator: seeded, reruns agree.
        torch.manual_seed(cfg.seed)
        model = StepAwareCLIP.from_clip(clip, num_train_timesteps=num_train_timesteps)
    # logit_scale stays fixed in every mode: SPO's pair threshold is calibrated on the score's scale.
    model.requires_grad_(False)
    model.modulation.requires_grad_(True)
    if cfg.trainable in ("vision", "all"):
        model.clip.vision_model.requires_grad_(True)
        model.clip.visual_projection.requires_grad_(True)
    if cfg.trainable == "all":
        model.clip.text_model.requires_grad_(True)
        model.clip.text_projection.requires_grad_(True)
    model.train()

    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.modulation.parameters()), "lr": cfg.modulation_learning_rate},
            {"params": [p for p in model.clip.parameters() if p.requires_grad], "lr": cfg.learning_rate},
        ],
        weight_decay=cfg.weight_decay,
    )
    lr_scheduler = warmup_schedule(optimizer, round(cfg.warmup_fraction * cfg.max_steps))
    prepared, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    params = [p for p in model.parameters() if p.requires_grad]
    train_state = run.resume() or {"step": 0, "micro_step": 0}
    step, micro_step = train_state["step"], train_state["micro_step"]

    scorer = PairScorer(prepared, processor, parts, features, cfg, device)
    train_rows = table_rows(train_table)
    eval_rows = table_rows(eval_table)
    per_micro_step = cfg.batch_size * accelerator.num_processes
    # The held-out accuracy before any training: the clean-image scorer's on the very noisy x0s the
    # trained model is evaluated on (the modulation starts as the identity), logged with step 1.
    initial = {}
    if step == 0 and eval_rows:
        initial = {f"initial_{k}": v for k, v in evaluate(scorer, eval_rows, cfg, num_train_timesteps, accelerator).items()}
    progress = tqdm(total=cfg.max_steps, initial=step, desc="spm", disable=not accelerator.is_local_main_process)
    while step < cfg.max_steps:
        started = time.perf_counter()
        sums: dict[str, float] = {}
        for _ in range(cfg.gradient_accumulation_steps):
            first = micro_step * per_micro_step + accelerator.process_index * cfg.batch_size
            positions = range(first, first + cfg.batch_size)
            rows = [
                with_timestep(train_rows[i], cfg.seed, position, num_train_timesteps)
                for i, position in zip(
                    stream_indices(len(train_rows), cfg.seed, first, cfg.batch_size), positions, strict=True
                )
            ]
            with accelerator.accumulate(prepared):
                score_0, score_1 = scorer(rows, noise_seeds=[cfg.seed * 2_000_003 + p + 1 for p in positions])
                labels = torch.tensor([r.label_0 for r in rows], device=device)
                loss, metrics = pairwise_preference_loss(score_0, score_1, labels)
                loss = loss.mean()
                check_finite(step + 1, loss=accelerator.reduce(loss.detach(), "mean").item())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm).item()
                    # Under fp16 an infinite norm is the grad scaler's business: it skips the step.
                    if cfg.mixed_precision != "fp16":
                        check_finite(step + 1, grad_norm=grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            micro_step += 1
            add_counts(sums, "train", rows, score_0.detach(), score_1.detach(), cfg.timestep_buckets)
            sums["loss_sum"] = sums.get("loss_sum", 0.0) + loss.item()
        # A step the fp16 grad scaler skipped does not advance the schedule.
        if not optimizer.step_was_skipped:
            lr_scheduler.step()
        step += 1

        record = accuracies(reduce_counts(sums, "train", cfg.timestep_buckets, accelerator))
        loss_sum = accelerator.reduce(torch.tensor(sums["loss_sum"], device=device), "sum").item()
        record["loss"] = loss_sum / (cfg.gradient_accumulation_steps * accelerator.num_processes)
        if (step % cfg.eval_every == 0 or step == cfg.max_steps) and eval_rows:
            record.update(evaluate(scorer, eval_rows, cfg, num_train_timesteps, accelerator))
        record.update(initial)
        initial = {}
        modulation_lr, lr = lr_scheduler.get_last_lr()
        pairs_per_s = per_micro_step * cfg.gradient_accumulation_steps / (time.perf_counter() - started)
        run.log(
            step,
            {
                **record,
                "lr": lr,
                "modulation_lr": modulation_lr,
                "grad_norm": grad_norm,
                "pairs_per_s": pairs_per_s,
            },
        )
        progress.update()
        progress.set_postfix(loss=f"{record['loss']:.4f}", pairs_per_s=f"{pairs_per_s:.1f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            run.save_checkpoint(step, {"micro_step": micro_step}, keep=cfg.keep_checkpoints)
    progress.close()

    return run.save_final(lambda folder: accelerator.unwrap_model(prepared).save_pretrained(folder, processor))


def select_pairs(table: pl.DataFrame, step_pairs: str) -> pl.DataFrame:
    """The snapshot rows the SPM learns from: final pairs, plus step pairs as `SPMConfig.step_pairs` says.

    A step pair's ``preview`` column names what its judges saw (``completion``: the finished image
    its candidate leads to; null: the predicted x0); snapshots without the column have none.
    """
    kind = pl.col("kind")
    if step_pairs == "all":
        return table
    if step_pairs == "completion" and "preview" in table.columns:
        return table.filter((kind != "step") | (pl.col("preview") == "completion"))
    return table.filter(kind != "step")


def is_held_out(prompt: str, fraction: float, seed: int) -> bool:
    """Whether a prompt belongs to the evaluation split: a stable hash of (seed, prompt) below `fraction`."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def table_rows(table: pl.DataFrame) -> list[Row]:
    """Snapshot rows as `Row`s; final pairs get timestep -1 until `with_timestep` draws one.

    Raises:
        SnapshotError: A row's kind is neither final nor step, or a step pair has no timestep.
    """
    rows = []
    for r in table.iter_rows(named=True):
        if r["kind"] not in ("final", "step"):
            raise SnapshotError(f"pair {r['pair_id']} has kind {r['kind']!r}; expected final or step")
        if r["kind"] == "step" and r["timestep"] is None:
            raise SnapshotError(f"step pair {r['pair_id']} has no timestep")
        rows.append(
            Row(
                prompt=r["prompt"],
                image_0=Path(r["image_0"]),
                image_1=Path(r["image_1"]),
                label_0=float(r["label_0"]),
                timestep=int(r["timestep"]) if r["kind"] == "step" else -1,
                is_step=r["kind"] == "step",
            )
        )
    return rows


def with_timestep(row: Row, seed: int, position: int, num_train_timesteps: int) -> Row:
    """A final pair with its t ~ U[0, T) drawn from (seed, stream position); step pairs keep theirs."""
    if row.is_step:
        return row
    generator = torch.Generator().manual_seed(seed * 1_000_003 + position)
    return dataclasses.replace(
        row, timestep=int(torch.randint(num_train_timesteps, (1,), generator=generator))
    )


class PairScorer:
    """Scores both images of pairs with the SPM, first turning final pairs into predicted x0s at t."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: CLIPProcessor,
        parts: Parts,
        features: Features,
        cfg: SPMConfig,
        device: torch.device,
    ) -> None:
        self.model, self.processor, self.parts = model, processor, parts
        self.encoder = EncodedOnce(features) if cfg.cache_latents else features
        self.cfg, self.device = cfg, device

    def __call__(self, rows: list[Row], noise_seeds: list[int]) -> tuple[Tensor, Tensor]:
        """Scores B pairs.

        Args:
            rows: B pairs with their timesteps.
            noise_seeds: One seed per pair for the noise shared by its two final images.

        Returns:
            (score_0, score_1), each shape (B,).
        """
        images_0, images_1 = [], []
        finals = [i for i, r in enumerate(rows) if not r.is_step]
        predicted = self.predicted_x0_images([rows[i] for i in finals], [noise_seeds[i] for i in finals])
        by_row = dict(zip(finals, predicted, strict=True))
        for i, row in enumerate(rows):
            if row.is_step:
                with Image.open(row.image_0) as a, Image.open(row.image_1) as b:
                    images_0.append(a.convert("RGB"))
                    images_1.append(b.convert("RGB"))
            else:
                images_0.append(by_row[i][0])
                images_1.append(by_row[i][1])
        prompts = [r.prompt for r in rows]
        batch = self.processor(
            images=images_0 + images_1,
            text=prompts + prompts,
            return_tensors="pt",
            padding=True,
            truncation=True,
        ).to(self.device)
        timesteps = torch.tensor([r.timestep for r in rows] * 2, device=self.device)
        scores = self.model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], timesteps)
        return scores.chunk(2)

    @torch.no_grad()
    def predicted_x0_images(
        self, rows: list[Row], noise_seeds: list[int]
    ) -> list[tuple[Image.Image, Image.Image]]:
        """Both images of each final pair, noised to its t with one shared noise and denoised to x0 by the base model."""
        if not rows:
            return []
        latents = self.encoder.latents([path for r in rows for path in (r.image_0, r.image_1)])  # (2B, C, h, w)
        noise = torch.stack(
            [torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(s)) for s in noise_seeds]
        )
        noise = noise.repeat_interleave(2, dim=0).to(latents)
        timesteps = torch.tensor([r.timestep for r in rows], device=latents.device).repeat_interleave(2)
        scheduler = self.parts.noise_scheduler
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prompts = [r.prompt for r in rows for _ in range(2)]
        text = conditioning(self.encoder, prompts, self.parts.is_sdxl, self.cfg.resolution)
        output = guided_output(
            self.parts.unet, noisy.to(text.hidden.dtype), timesteps, text, self.cfg.guidance_scale
        )
        x0 = predict_x0(scheduler, output.float(), noisy, timesteps)[0]
        images = decode(self.parts.vae, x0)
        return list(zip(images[0::2], images[1::2], strict=True))


def bucket_names(edges: tuple[int, ...]) -> list[str]:
    """``t0_250``-style names of the buckets [edges[i], edges[i + 1])."""
    return [f"t{lo}_{hi}" for lo, hi in zip(edges, edges[1:], strict=False)]


def add_counts(
    sums: dict[str, float],
    prefix: str,
    rows: list[Row],
    score_0: Tensor,
    score_1: Tensor,
    edges: tuple[int, ...],
) -> None:
    """Adds correct / decisive counts of decisive (non-tie) pairs, overall and per timestep bucket, to `sums`."""
    names = bucket_names(edges)
    for row, a, b in zip(rows, score_0.tolist(), score_1.tolist(), strict=True):
        if row.label_0 == 0.5:
            continue
        correct = 0.5 if a == b else float((a > b) == (row.label_0 > 0.5))
        bucket = next(
            (name for name, hi in zip(names, edges[1:], strict=False) if row.timestep < hi), names[-1]
        )
        for key in (prefix, f"{prefix}_{bucket}"):
            sums[f"{key}_correct"] = sums.get(f"{key}_correct", 0.0) + correct
            sums[f"{key}_decisive"] = sums.get(f"{key}_decisive", 0.0) + 1


def reduce_counts(
    sums: dict[str, float], prefix: str, edges: tuple[int, ...], accelerator: Accelerator
) -> dict[str, float]:
    """Sums the `add_counts` counts over processes; every process sends every name, present or not."""
    keys = [prefix] + [f"{prefix}_{bucket}" for bucket in bucket_names(edges)]
    names = [f"{key}_{kind}" for key in keys for kind in ("correct", "decisive")]
    local = torch.tensor(
        [sums.get(name, 0.0) for name in names], device=accelerator.device, dtype=torch.float64
    )
    return dict(zip(names, accelerator.reduce(local, "sum").tolist(), strict=True))


def accuracies(totals: dict[str, float]) -> dict[str, float]:
    """Turns ``X_correct`` / ``X_decisive`` counts into ``X_accuracy``; buckets without pairs are left out."""
    out = {key: value for key, value in totals.items() if not key.endswith(("_correct", "_decisive"))}
    for key, correct in totals.items():
        if key.endswith("_correct"):
            name = key.removesuffix("_correct")
            decisive = totals[f"{name}_decisive"]
            if decisive:
                out[f"{name}_accuracy"] = correct / decisive
                out[f"{name}_pairs"] = decisive
    return out


@torch.no_grad()
def evaluate(
    scorer: PairScorer, rows: list[Row], cfg: SPMConfig, num_train_timesteps: int, accelerator: Accelerator
) -> dict[str, float]:
    """Accuracy on held-out pairs per timestep bucket.

    Final pairs are scored once in every bucket, at a t drawn uniformly inside it (fixed by the
    seed, so evaluations compare); step pairs count in the bucket of their own t.

    Returns:
        ``eval_accuracy`` and ``eval_<bucket>_accuracy`` / ``eval_<bucket>_pairs``.
    """
    edges = cfg.timestep_buckets
    generator = torch.Generator().manual_seed(cfg.seed)
    cases, seeds = [], []
    for index, row in enumerate(rows):
        if row.is_step:
            cases.append(row)
        else:
            for lo, hi in zip(edges, edges[1:], strict=False):
                t = int(torch.randint(lo, min(hi, num_train_timesteps), (1,), generator=generator))
                cases.append(dataclasses.replace(row, timestep=t))
        seeds.extend([cfg.seed * 7_000_003 + index] * (len(cases) - len(seeds)))
    mine = range(accelerator.process_index, len(cases), accelerator.num_processes)
    sums: dict[str, float] = {}
    model = scorer.model
    model.eval()
    for start in range(0, len(mine), cfg.batch_size):
        batch = [cases[i] for i in mine[start : start + cfg.batch_size]]
        score_0, score_1 = scorer(batch, [seeds[i] for i in mine[start : start + cfg.batch_size]])
        add_counts(sums, "eval", batch, score_0, score_1, edges)
    model.train()
    return accuracies(reduce_counts(sums, "eval", edges, accelerator))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Step-aware preference model training (see training.spm.SPMConfig)."
    )
    parser.add_argument("--config", type=Path, required=True, help="JSON file with SPMConfig options.")
    main(SPMConfig.from_json(parser.parse_args().config))
