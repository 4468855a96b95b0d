"""Generation benchmark on the CPU: final pairs and SPO step pools, images per second, into a temporary store.

    .venv/bin/python benchmarks/generation.py --out benchmarks/out/generation.json

Samples from the shipped toy model (or any pipeline given with --model) on the shapes world's
training captions, through `generate_pairs` and `generate_step_pools`, and times a plain
``pipe(...)`` call on the same prompts with the same DDIM settings for comparison. A short
warm-up run comes first so that one-off costs are not counted; `generate_pairs` and the plain
call then alternate ``--repeats`` times (each repeat with its own seed, so new images) and the
medians are compared. Besides wall-clock seconds it reports process CPU seconds, which a machine
shared with other jobs disturbs less.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import DDIMScheduler  # noqa: E402
from figures import publish  # noqa: E402

from datastore.store import Store  # noqa: E402
from workbench.generation import (  # noqa: E402
    generate_pairs,
    generate_step_pools,
    image_seed,
    image_size,
)
from workbench.generation_config import GenerationConfig  # noqa: E402
from workbench.pipelines import load_pipeline  # noqa: E402
from workbench.toy import TOY_MODEL_DIR, train_captions  # noqa: E402

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """The result of ``fn()``, its wall-clock seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def plain_pipeline(pipe, prompts: list[str], cfg: GenerationConfig, per_prompt: int | None = None) -> None:
    """``pipe(...)`` drawing the same images as `generate_pairs`, batch for batch, PIL output
    (``per_prompt`` images of each prompt instead of ``cfg.per_prompt`` when given)."""
    per_prompt = per_prompt or cfg.per_prompt
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    height, width = image_size(pipe, cfg)
    per_batch = max(1, cfg.batch_size // per_prompt)
    for i in range(0, len(prompts), per_batch):
        batch = prompts[i : i + per_batch]
        generators = [
            torch.Generator().manual_seed(image_seed(cfg.seed, p, j)) for p in batch for j in range(per_prompt)
        ]
        pipe(
            prompt=batch,
            num_images_per_prompt=per_prompt,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            eta=cfg.eta,
            height=height,
            width=width,
            generator=generators,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=str(TOY_MODEL_DIR), help="Pipeline folder or hub id (default: the toy model)."
    )
    parser.add_argument("--prompts", type=int, default=16, help="Number of training captions to sample for.")
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="num_inference_steps")
    parser.add_argument("--k", type=int, default=4, help="Candidates per step pool.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads.")
    parser.add_argument("--repeats", type=int, default=3, help="Alternated runs of generate_pairs and plain.")
    parser.add_argument("--out", type=Path, help="Write the figures as JSON here too.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    prompts = list(train_captions()[: args.prompts])
    cfg = GenerationConfig(
        per_prompt=args.per_prompt,
        num_inference_steps=args.steps,
        pool_k=args.k,
        batch_size=args.batch_size,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "home")
        warm = GenerationConfig(per_prompt=2, num_inference_steps=2, pool_k=2, pool_steps=(1, 2), seed=1)
        generate_pairs(store, pipe, "bench", prompts[:1], warm, progress=False)
        generate_step_pools(store, pipe, "bench", prompts[:1], warm, progress=False)

        pools, pools_s, pools_cpu = timed(
            lambda: generate_step_pools(store, pipe, "bench", prompts, cfg, progress=False)
        )
        runs: dict[str, list[tuple[float, float]]] = {"pairs": [], "plain": []}
        for repeat in range(args.repeats):
            # Each repeat draws new images (seed = repeat) into the same warm store.
            seeded = dataclasses.replace(cfg, seed=repeat)
            pairs, seconds, cpu = timed(
                lambda c=seeded: generate_pairs(store, pipe, "bench", prompts, c, progress=False)
            )
            runs["pairs"].append((seconds, cpu))
            _, seconds, cpu = timed(lambda c=seeded: plain_pipeline(pipe, prompts, c))
            runs["plain"].append((seconds, cpu))
    (pairs_s, pairs_cpu), (plain_s, plain_cpu) = (
        tuple(statistics.median(column) for column in zip(*runs[name], strict=True))
        for name in ("pairs", "plain")
    )

    height, width = image_size(pipe, cfg)
    figures = {
        "model": args.model,
        "image_size": [height, width],
        "threads": args.threads,
        "prompts": len(prompts),
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "batch_size": cfg.batch_size,
        "pairs": {
            "images": pairs.images,
            "pairs": pairs.pairs,
            "seconds": round(pairs_s, 2),
            "cpu_seconds": round(pairs_cpu, 2),
            "images_per_s": round(pairs.images / pairs_s, 2),
        },
        "plain_pipeline": {
            "images": pairs.images,
            "seconds": round(plain_s, 2),
            "cpu_seconds": round(plain_cpu, 2),
            "images_per_s": round(pairs.images / plain_s, 2),
        },
        "repeats": {name: [[round(s, 2), round(c, 2)] for s, c in values] for name, values in runs.items()},
        "pairs_over_plain_time": round(pairs_s / plain_s, 3),
        "pairs_over_plain_cpu_time": round(pairs_cpu / plain_cpu, 3),
        "step_pools": {
            "k": cfg.pool_k,
            "steps": list(cfg.steps_with_pools()),
            "chains": len(prompts),
            "pools": pools.pools,
            "images": pools.images,
            "pairs": pools.pairs,
            "seconds": round(pools_s, 2),
            "cpu_seconds": round(pools_cpu, 2),
            "images_per_s": round(pools.images / pools_s, 2),
            "seconds_per_chain": round(pools_s / len(prompts), 3),
        },
    }
    publish(figures, args.out)


if __name__ == "__main__":
    main()
