"""Candidate images for judging: finished pairs and SPO-style noisy-step pools, written to the store.

`generate_pairs` samples N finished candidates per prompt and pairs them; `generate_step_pools`
runs one DDIM chain per prompt and, at chosen steps, draws k candidates of the next state from the
same parent (Liang et al. 2024, SPO), stores each candidate's predicted x0 as an image, pairs the
candidates of a pool and continues the chain from one of them picked uniformly at random.

Every image's seed (a chain's, for pools) is derived from the base seed, the prompt and the
candidate's index and recorded in its ``generations`` row, so any image can be regenerated alone.
Image files are written before the store's write lock is taken; each batch of prompts is then one
transaction.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import typing
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from datastore.media import StoredImage
from datastore.records import (
    ImageRow,
    NewPair,
    insert_generation,
    insert_images,
    insert_pairs,
    insert_previews,
    insert_step_pool,
    register_model,
    upsert_prompts,
)
from datastore.store import Store
from workbench.errors import GenerationError
from workbench.generation_config import GenerationConfig, PairingScheme

# torch and diffusers are imported by the functions that sample.
if TYPE_CHECKING:
    from diffusers import DDIMScheduler

    from workbench.pipelines import SDPipeline

SAMPLER = "ddim"


@dataclass
class GenerationReport:
    """What a generation call added.

    Attributes:
        seed: The base seed used (the given one, or the one drawn).
        prompts: Prompts sampled for.
        images: Images generated (an image the store already held is kept once).
        pairs: Pairs written.
        pools: Step pools written.
        skipped_pairs: Pairs left out because both candidates gave the same image bytes.
    """

    seed: int
    prompts: int = 0
    images: int = 0
    pairs: int = 0
    pools: int = 0
    skipped_pairs: int = 0


def derive_seed(base_seed: int, prompt: str, what: str) -> int:
    """A 63-bit seed (fits a BIGINT column) for one image or chain, from the base seed, prompt and role."""
    digest = hashlib.sha256(f"{base_seed}\x00{prompt}\x00{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def image_seed(base_seed: int, prompt: str, index: int) -> int:
    """The seed of finished candidate ``index`` of ``prompt``."""
    return derive_seed(base_seed, prompt, f"image-{index}")


def chain_seed(base_seed: int, prompt: str) -> int:
    """The seed of the step-pool chain of ``prompt``."""
    return derive_seed(base_seed, prompt, "pool-chain")


def pair_indices(n: int, scheme: PairingScheme, rng: random.Random) -> list[tuple[int, int]]:
    """Which of n candidates to pair.

    Args:
        n: Number of candidates (>= 2).
        scheme: ``all``: every two, n(n-1)/2 pairs; ``adjacent``: (0, 1), (1, 2), ..., n-1 pairs;
            ``random``: a random matching of the candidates, n // 2 pairs.
        rng: Source of the random matching.

    Returns:
        Index pairs (a, b) with a != b.
    """
    if scheme == "all":
        return [(a, b) for a in range(n) for b in range(a + 1, n)]
    if scheme == "adjacent":
        return [(a, a + 1) for a in range(n - 1)]
    if scheme == "random":
        order = list(range(n))
        rng.shuffle(order)
        return [(order[i], order[i + 1]) for i in range(0, n - 1, 2)]
    raise GenerationError(f"pairing must be one of {', '.join(typing.get_args(PairingScheme))}, got {scheme!r}")


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts without repeats, in order; raises on an empty list or a blank prompt."""
    if isinstance(prompts, str):
        raise GenerationError("prompts must be a list of strings, got a single string")
    if not prompts:
        raise GenerationError("no prompts to generate from: the prompt list is empty")
    for i, prompt in enumerate(prompts):
        if not prompt or not prompt.strip():
            raise GenerationError(f"prompt {i} is empty")
    return list(dict.fromkeys(prompts))


def image_size(pipe: SDPipeline, cfg: GenerationConfig) -> tuple[int, int]:
    """(height, width): the config's, else the pipeline's native size (UNet sample size x VAE factor)."""
    from training.sampling import native_side

    native = native_side(pipe.unet.config, pipe.vae.config)
    height, width = cfg.height or native, cfg.width or native
    for name, value in (("height", height), ("width", width)):
        if value % pipe.vae_scale_factor:
            raise GenerationError(
                f"{name} must be a multiple of {pipe.vae_scale_factor} for this model, got {value}"
            )
    return height, width


def ddim_scheduler(pipe: SDPipeline, cfg: GenerationConfig) -> DDIMScheduler:
    """A DDIM scheduler built from the pipeline's scheduler config, with ``num_inference_steps`` set.

    A fresh scheduler per call leaves ``pipe.scheduler`` as it was.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if scheduler.config.thresholding:
        raise GenerationError(
            "the pipeline's scheduler uses dynamic thresholding, which the DDIM sampler here does not support"
        )
    scheduler.set_timesteps(cfg.num_inference_steps)
    return scheduler


def _sampler_params(scheduler: DDIMScheduler, cfg: GenerationConfig, base_seed: int, **extra) -> dict:
    return {
        "eta": cfg.eta,
        "prediction_type": scheduler.config.prediction_type,
        "timestep_spacing": scheduler.config.timestep_spacing,
        "base_seed": base_seed,
        **extra,
    }


def _model_path(pipe: SDPipeline) -> str:
    return str(pipe.config["_name_or_path"])


def _pairs_of(
    stored: Sequence[StoredImage],
    scheme: PairingScheme,
    rng: random.Random,
    report: GenerationReport,
    **fields,
) -> list[NewPair]:
    """The pairs of one prompt's (or pool's) candidates; pairs of two identical images are counted, not kept."""
    pairs = []
    for a, b in pair_indices(len(stored), scheme, rng):
        if stored[a].id == stored[b].id:
            report.skipped_pairs += 1
            continue
        pairs.append(NewPair(image_a=stored[a].id, image_b=stored[b].id, **fields))
    return pairs


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def generate_pairs(
    store: Store,
    pipe: SDPipeline,
    model_name: str,
    prompts: Sequence[str],
    cfg: GenerationConfig,
    *,
    progress: bool = True,
) -> GenerationReport:
    """Samples ``cfg.per_prompt`` finished candidates per prompt and stores them as final pairs.

    Each candidate has its own generator seeded with `image_seed`, so it is reproducible alone:
    the same base seed gives the same image bytes. Candidates of several prompts share a UNet
    batch. Per batch of prompts, the image files are written first, then one transaction records
    the prompts, the model, one ``generations`` row per image, the images and the pairs; a writer
    thread does this (PNG encoding, hashing, files, transaction) while the next batch is denoised.

    Args:
        store: Where images and rows go.
        pipe: An SD or SDXL pipeline (see `workbench.pipelines.load_pipeline`).
        model_name: Name the model is registered under (idempotent).
        prompts: Prompts; repeats are sampled once.
        cfg: Sampling and pairing settings.
        progress: Show a progress bar.

    Returns:
        Counts of what was written, and the base seed.

    Raises:
        GenerationError: no prompts, a blank prompt, or a size the model cannot take.
    """
    import torch

    from workbench.sampling import decode, denoise, encode_prompts

    prompts = _check_prompts(prompts)
    if cfg.per_prompt == 0:
        raise GenerationError("per_prompt is 0: there are no final candidates to pair")
    height, width = image_size(pipe, cfg)
    scheduler = ddim_scheduler(pipe, cfg)
    base_seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
    report = GenerationReport(seed=base_seed, prompts=len(prompts))
    n = cfg.per_prompt

    def write(batch: Sequence[str], seeds: list[int], images: list) -> None:
        stored = [store.media.put_image(image) for image in images]
        with store.write() as con:
            model_id = register_model(con, model_name, _model_path(pipe))
            prompt_ids = upsert_prompts(con, batch)
            rows, pairs = [], []
            for p, prompt in enumerate(batch):
                mine = stored[p * n : (p + 1) * n]
                for j, image in enumerate(mine):
                    generation_id = insert_generation(
                        con,
                        model_id=model_id,
                        prompt_id=prompt_ids[prompt],
                        seed=seeds[p * n + j],
                        sampler=SAMPLER,
                        steps=cfg.num_inference_steps,
                        guidance=cfg.guidance_scale,
                        width=width,
                        height=height,
                        params=_sampler_params(scheduler, cfg, base_seed, kind="final", candidate=j),
                    )
                    rows.append(ImageRow(image=image, generation_id=generation_id))
                rng = random.Random(derive_seed(base_seed, prompt, "pairing"))
                pairs += _pairs_of(mine, cfg.pairing, rng, report, prompt_id=prompt_ids[prompt], kind="final")
            insert_images(con, rows)
            insert_pairs(con, pairs)
        report.images += len(images)
        report.pairs += len(pairs)

    # One batch is written while the next is denoised; only the writer touches the report and the
    # store until its batch is done, and a failed write raises here at the next batch or the end.
    with (
        tqdm(total=len(prompts) * n, unit="img", desc="final pairs", disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as writer,
    ):
        written: Future | None = None
        for batch in _chunks(prompts, max(1, cfg.batch_size // n)):
            text = encode_prompts(pipe, batch, height=height, width=width)
            seeds = [image_seed(base_seed, prompt, j) for prompt in batch for j in range(n)]
            owner = torch.arange(len(batch)).repeat_interleave(n)
            images = []
            for part in _chunks(range(len(seeds)), cfg.batch_size):
                generators = [torch.Generator().manual_seed(seeds[i]) for i in part]
                latents, _ = denoise(
                    pipe,
                    scheduler,
                    text.select(owner[part.start : part.stop].to(pipe.device)),
                    generators,
                    height=height,
                    width=width,
                    guidance_scale=cfg.guidance_scale,
                    eta=cfg.eta,
                )
                images.extend(decode(pipe, latents, cfg.batch_size))
                bar.update(len(part))
            if written is not None:
                written.result()
            written = writer.submit(write, batch, seeds, images)
        if written is not None:
            written.result()
    return report


def generate_step_pools(
    store: Store,
    pipe: SDPipeline,
    model_name: str,
    prompts: Sequence[str],
    cfg: GenerationConfig,
    *,
    progress: bool = True,
) -> GenerationReport:
    """Runs one DDIM chain per prompt and stores SPO step pools of ``cfg.pool_k`` candidates.

    At each step of `GenerationConfig.steps_with_pools` the chain's next state is drawn k times
    from the same parent (one DDIM mean, independent noise; see `workbench.sampling.denoise`).
    Each candidate's predicted x0 is decoded and stored with the pool, its step index and
    timestep; the candidates are paired (kind ``step``) per ``cfg.pairing``; the chain goes on
    from a candidate picked uniformly at random, recorded as the pool's ``continued_image``.
    One ``generations`` row per chain records its seed (`chain_seed`). With ``cfg.previews``
    ``completion`` every candidate is also completed with deterministic DDIM (eta 0) and the
    finished image is stored as its completion preview (`image_previews`).

    Args:
        store: Where images and rows go.
        pipe: An SD or SDXL pipeline.
        model_name: Name the model is registered under (idempotent).
        prompts: Prompts; repeats are sampled once.
        cfg: Sampling and pairing settings; ``eta`` must be > 0.
        progress: Show a progress bar.

    Returns:
        Counts of what was written, and the base seed.

    Raises:
        GenerationError: no prompts, a blank prompt, eta = 0, or a size the model cannot take.
    """
    import torch

    from training.sampling import complete
    from workbench.sampling import decode, denoise, encode_prompts

    prompts = _check_prompts(prompts)
    if cfg.pool_k == 0:
        raise GenerationError("pool_k is 0: there are no step pools to draw")
    if cfg.eta <= 0:
        raise GenerationError("step pools need eta > 0: with eta = 0 every candidate of a pool is the same")
    height, width = image_size(pipe, cfg)
    scheduler = ddim_scheduler(pipe, cfg)
    base_seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
    report = GenerationReport(seed=base_seed, prompts=len(prompts))
    k, steps = cfg.pool_k, cfg.steps_with_pools()
    per_candidate = 2 if cfg.previews == "completion" else 1
    with tqdm(
        total=len(prompts) * len(steps) * k * per_candidate, unit="img", desc="step pools", disable=not progress
    ) as bar:
        for batch in _chunks(prompts, max(1, cfg.batch_size // k)):
            text = encode_prompts(pipe, batch, height=height, width=width)
            seeds = [chain_seed(base_seed, prompt) for prompt in batch]
            _, pools = denoise(
                pipe,
                scheduler,
                text,
                [torch.Generator().manual_seed(seed) for seed in seeds],
                height=height,
                width=width,
                guidance_scale=cfg.guidance_scale,
                eta=cfg.eta,
                pool_steps=steps,
                k=k,
            )
            # stored[pool][chain][candidate], and the candidates' completion previews alike
            stored, previews = [], []
            candidate_text = text.select(torch.arange(len(batch), device=pipe.device).repeat_interleave(k))
            for pool in pools:
                images = decode(pipe, pool.pred_x0.flatten(0, 1), cfg.batch_size)
                files = [store.media.put_image(image) for image in images]
                stored.append([files[b * k : (b + 1) * k] for b in range(len(batch))])
                bar.update(len(images))
                if cfg.previews == "completion":
                    finished = complete(
                        pipe.unet,
                        scheduler,
                        candidate_text,
                        pool.candidates.flatten(0, 1),
                        from_step=pool.step,
                        guidance_scale=cfg.guidance_scale,
                    )
                    previews.append([store.media.put_image(image) for image in decode(pipe, finished, cfg.batch_size)])
                    bar.update(len(images))
            with store.write() as con:
                model_id = register_model(con, model_name, _model_path(pipe))
                prompt_ids = upsert_prompts(con, batch)
                rows, pairs, preview_rows, links = [], [], [], []
                for b, prompt in enumerate(batch):
                    generation_id = insert_generation(
                        con,
                        model_id=model_id,
                        prompt_id=prompt_ids[prompt],
                        seed=seeds[b],
                        sampler=SAMPLER,
                        steps=cfg.num_inference_steps,
                        guidance=cfg.guidance_scale,
                        width=width,
                        height=height,
                        params=_sampler_params(
                            scheduler, cfg, base_seed, kind="step_pools", k=k, pool_steps=list(steps)
                        ),
                    )
                    rng = random.Random(derive_seed(base_seed, prompt, "pairing"))
                    for pool_index, (pool, pool_images) in enumerate(zip(pools, stored, strict=True)):
                        candidates = pool_images[b]
                        pool_id = insert_step_pool(
                            con,
                            generation_id=generation_id,
                            prompt_id=prompt_ids[prompt],
                            step_index=pool.step,
                            num_steps=cfg.num_inference_steps,
                            timestep=pool.timestep,
                            k=k,
                            continued_image=candidates[int(pool.continued[b])].id,
                        )
                        rows += [
                            ImageRow(
                                image=image,
                                generation_id=generation_id,
                                pool_id=pool_id,
                                step_index=pool.step,
                                timestep=pool.timestep,
                            )
                            for image in candidates
                        ]
                        if previews:
                            # Finished images, not pool members: they belong to the chain only.
                            finished = previews[pool_index][b * k : (b + 1) * k]
                            preview_rows += [ImageRow(image=image, generation_id=generation_id) for image in finished]
                            links += [(c.id, f.id) for c, f in zip(candidates, finished, strict=True)]
                        pairs += _pairs_of(
                            candidates,
                            cfg.pairing,
                            rng,
                            report,
                            prompt_id=prompt_ids[prompt],
                            kind="step",
                            timestep=pool.timestep,
                            pool_id=pool_id,
                        )
                        report.pools += 1
                insert_images(con, rows + preview_rows)
                insert_previews(con, "completion", links)
                insert_pairs(con, pairs)
            report.images += len(rows) + len(preview_rows)
            report.pairs += len(pairs)
    return report
