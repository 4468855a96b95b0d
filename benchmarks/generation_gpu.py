"""Generation benchmark on a CUDA GPU: our sampler vs a plain ``pipe(...)`` call on an SD1.5-shaped pipeline.

    .venv/bin/python benchmarks/generation_gpu.py --out benchmarks/out/generation_gpu.json
    .venv/bin/python benchmarks/generation_gpu.py --tiny   # tiny shapes, 2 steps, few prompts (CPU too)

Builds a Stable Diffusion 1.5-shaped pipeline with random weights (`sd_shapes.save_pipeline`,
nothing is downloaded): UNet 320/640/1280/1280 with cross-attention 768 (859.5 M parameters), a
CLIP text encoder of SD1.5's shape (hidden 768, 12 layers, 77 positions) behind a small offline
tokenizer, SD's VAE shape (128/256/512/512) and a DDIM scheduler with SD's betas. It is saved with
``save_pretrained`` and loaded back through `workbench.pipelines.load_pipeline`, as real weights
would be (float16 on CUDA, float32 on the CPU). Then, in one run and on the same prompts at the
pipeline's native size (512 x 512; 16 x 16 with ``--tiny``):

- `generate_pairs` (PNG files + store rows included) vs ``pipe(...)`` drawing the same images in
  the same batches: the time ratio;
- `generate_step_pools` (k candidates at 4 steps, each candidate's x0 decoded and stored) vs
  ``pipe(...)`` drawing one image per prompt: the time ratio;
- ``torch.cuda.max_memory_allocated`` of each (None on the CPU).

Random weights draw noise-like images; the timings are those of real SD1.5 weights of the same
shapes. Without ``--tiny``, exits with a message when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from figures import publish  # noqa: E402
from generation import plain_pipeline  # noqa: E402
from sd_shapes import save_pipeline  # noqa: E402

from datastore.store import Store  # noqa: E402
from workbench.generation import (  # noqa: E402
    generate_pairs,
    generate_step_pools,
    image_size,
)
from workbench.generation_config import GenerationConfig  # noqa: E402
from workbench.pipelines import default_dtype, load_pipeline  # noqa: E402

PROMPTS = [
    f"a {size} {colour} {thing} on a {place}"
    for size in ("small", "large")
    for colour in ("red", "blue")
    for thing in ("cat", "house")
    for place in ("beach", "hill")
]

# --tiny's workload: a few prompts, 2 steps, small batches; an option given on the command line wins.
TINY_PROMPTS = 4
TINY_DEFAULTS = {"per_prompt": 2, "steps": 2, "k": 2, "batch_size": 4}


def measure(fn: Callable[[], object]) -> tuple[float, float | None]:
    """(seconds, peak GiB allocated or None without CUDA) of one call, after the GPU is idle."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if not cuda:
        return time.perf_counter() - start, None
    torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def seconds(value: float) -> float:
    """Seconds as written in the figures: 4 significant digits (a tiny run takes hundredths)."""
    return float(f"{value:.4g}")


def gib(value: float | None) -> float | None:
    """GiB as written in the figures: 2 decimals, None where not measured."""
    return None if value is None else round(value, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="Tiny shapes and workload (runs on the CPU when there is no GPU)."
    )
    parser.add_argument("--per-prompt", type=int, default=4, help="Default 4; 2 with --tiny.")
    parser.add_argument(
        "--steps", type=int, default=20, help="num_inference_steps; default 20, 2 with --tiny."
    )
    parser.add_argument(
        "--k", type=int, default=4, help="Candidates per step pool; default 4, 2 with --tiny."
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="Images per UNet batch; default 16, 4 with --tiny."
    )
    parser.add_argument("--out", type=Path, help="Write the figures as JSON here too.")
    args = parser.parse_args()
    if args.tiny:
        parser.set_defaults(**TINY_DEFAULTS)
        args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not args.tiny and not cuda:
        raise SystemExit(
            "benchmarks/generation_gpu.py needs a CUDA GPU and torch.cuda.is_available() is False here; "
            "run it with --tiny for the CPU check, or benchmarks/generation.py for the CPU figures"
        )

    device = torch.device("cuda" if cuda else "cpu")
    dtype = default_dtype(device)
    prompts = PROMPTS[:TINY_PROMPTS] if args.tiny else PROMPTS
    cfg = GenerationConfig(
        per_prompt=args.per_prompt,
        num_inference_steps=args.steps,
        pool_k=args.k,
        batch_size=args.batch_size,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sd15-shaped"
        save_pipeline(folder, "sd15", args.tiny, device)
        pipe = load_pipeline(folder, device=device, dtype=dtype)
        store = Store.open(Path(tmp) / "home")

        warm = GenerationConfig(per_prompt=2, num_inference_steps=2, pool_k=2, pool_steps=(1, 2), seed=1)
        generate_pairs(store, pipe, "sd15-shaped", prompts[:2], warm, progress=False)
        generate_step_pools(store, pipe, "sd15-shaped", prompts[:2], warm, progress=False)
        plain_pipeline(pipe, prompts[:2], dataclasses.replace(warm, batch_size=4))

        reports = {}
        plain_pairs_s, plain_pairs_gib = measure(
            lambda: plain_pipeline(pipe, prompts, cfg)
        )
        pairs_s, pairs_gib = measure(
            lambda: reports.update(
                pairs=generate_pairs(store, pipe, "sd15-shaped", prompts, cfg, progress=False)
            )
        )
        plain_chain_s, plain_chain_gib = measure(lambda: plain_pipeline(pipe, prompts, cfg, per_prompt=1))
        pools_s, pools_gib = measure(
            lambda: reports.update(
                pools=generate_step_pools(store, pipe, "sd15-shaped", prompts, cfg, progress=False)
            )
        )
        side = image_size(pipe, cfg)[0]

    pairs, pools = reports["pairs"], reports["pools"]
    figures = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": "float16 (VAE float32)" if dtype == torch.float16 else "float32",
        "image_size": side,
        "prompts": len(prompts),
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "batch_size": cfg.batch_size,
        "pairs": {
            "images": pairs.images,
            "pairs": pairs.pairs,
            "seconds": seconds(pairs_s),
            "images_per_s": round(pairs.images / pairs_s, 2),
            "max_memory_gib": gib(pairs_gib),
        },
        "plain_pipeline_same_images": {
            "images": pairs.images,
            "seconds": seconds(plain_pairs_s),
            "images_per_s": round(pairs.images / plain_pairs_s, 2),
            "max_memory_gib": gib(plain_pairs_gib),
        },
        "pairs_over_plain_time": round(pairs_s / plain_pairs_s, 3),
        "step_pools": {
            "k": cfg.pool_k,
            "steps": list(cfg.steps_with_pools()),
            "chains": len(prompts),
            "pools": pools.pools,
            "images": pools.images,
            "seconds": seconds(pools_s),
            "images_per_s": round(pools.images / pools_s, 2),
            "seconds_per_chain": seconds(pools_s / len(prompts)),
            "max_memory_gib": gib(pools_gib),
        },
        "plain_pipeline_one_image_per_prompt": {
            "images": len(prompts),
            "seconds": seconds(plain_chain_s),
            "max_memory_gib": gib(plain_chain_gib),
        },
        "pools_over_plain_chain_time": round(pools_s / plain_chain_s, 3),
    }
    publish(figures, args.out)


if __name__ == "__main__":
    main()
