"""Generation benchmark on a CUDA GPU: our sampler vs a plain ``pipe(...)`` call on an SD1.5-shaped pipeline.

    .venv/bin/python benchmarks/generation_gpu.py --out benchmarks/out/generation_gpu.json

Builds a Stable Diffusion 1.5-shaped pipeline with random weights (nothing is downloaded): UNet
320/640/1280/1280 with cross-attention 768 (859.5 M parameters), a CLIP text encoder of SD1.5's
shape (hidden 768, 12 layers, 77 positions) behind a small offline tokenizer, SD's VAE shape
(128/256/512/512) and a DDIM scheduler with SD's betas. It is saved with ``save_pretrained`` and
loaded back through `workbench.pipelines.load_pipeline`, as real weights would be. Then, in one
run and on the same prompts at 512 x 512:

- `generate_pairs` (PNG files + store rows included) vs ``pipe(...)`` drawing the same images in
  the same batches: the time ratio;
- `generate_step_pools` (k candidates at 4 steps, each candidate's x0 decoded and stored) vs
  ``pipe(...)`` drawing one image per prompt: the time ratio;
- ``torch.cuda.max_memory_allocated`` of each.

Random weights draw noise-like images; the timings are those of real SD1.5 weights of the same
shapes. Exits with a message when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from datastore.store import Store  # noqa: E402
from workbench.generation import generate_pairs, generate_step_pools, image_seed  # noqa: E402
from workbench.generation_config import GenerationConfig  # noqa: E402
from workbench.pipelines import load_pipeline  # noqa: E402

PROMPTS = [
    f"a {size} {colour} {thing} on a {place}"
    for size in ("small", "large")
    for colour in ("red", "blue")
    for thing in ("cat", "house")
    for place in ("beach", "hill")
]


def offline_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with one token per letter (no merges) and SD's 77 positions."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token="<|endoftext|>")


def save_sd15_shaped(folder: Path, device: str) -> None:
    """Writes an SD1.5-shaped pipeline with random float32 weights to ``folder``."""
    torch.manual_seed(0)
    tokenizer = offline_tokenizer()
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak GiB allocated) of one call, after the GPU is idle."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def plain_call(pipe, prompts: list[str], per_prompt: int, batch_size: int, cfg: GenerationConfig) -> None:
    """``pipe(...)`` with DDIM, drawing per_prompt images per prompt in batches of about batch_size images."""
    per_batch = max(1, batch_size // per_prompt)
    for i in range(0, len(prompts), per_batch):
        batch = prompts[i : i + per_batch]
        pipe(
            prompt=batch,
            num_images_per_prompt=per_prompt,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            eta=cfg.eta,
            generator=[
                torch.Generator().manual_seed(image_seed(0, p, j)) for p in batch for j in range(per_prompt)
            ],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="num_inference_steps")
    parser.add_argument("--k", type=int, default=4, help="Candidates per step pool.")
    parser.add_argument("--batch-size", type=int, default=16, help="Images per UNet batch.")
    parser.add_argument("--out", type=Path, help="Write the figures as JSON here too.")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/generation_gpu.py needs a CUDA GPU and torch.cuda.is_available() is False here; "
            "run benchmarks/generation.py for the CPU figures"
        )

    cfg = GenerationConfig(
        per_prompt=args.per_prompt,
        num_inference_steps=args.steps,
        pool_k=args.k,
        batch_size=args.batch_size,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sd15-shaped"
        save_sd15_shaped(folder, "cuda")
        pipe = load_pipeline(folder, device="cuda", dtype=torch.float16)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        store = Store.open(Path(tmp) / "home")

        warm = GenerationConfig(per_prompt=2, num_inference_steps=2, pool_k=2, pool_steps=(1, 2), seed=1)
        generate_pairs(store, pipe, "sd15-shaped", PROMPTS[:2], warm, progress=False)
        generate_step_pools(store, pipe, "sd15-shaped", PROMPTS[:2], warm, progress=False)
        plain_call(pipe, PROMPTS[:2], 2, 4, warm)

        reports = {}
        plain_pairs_s, plain_pairs_gib = measure(
            lambda: plain_call(pipe, PROMPTS, cfg.per_prompt, cfg.batch_size, cfg)
        )
        pairs_s, pairs_gib = measure(
            lambda: reports.update(
                pairs=generate_pairs(store, pipe, "sd15-shaped", PROMPTS, cfg, progress=False)
            )
        )
        plain_chain_s, plain_chain_gib = measure(lambda: plain_call(pipe, PROMPTS, 1, cfg.batch_size, cfg))
        pools_s, pools_gib = measure(
            lambda: reports.update(
                pools=generate_step_pools(store, pipe, "sd15-shaped", PROMPTS, cfg, progress=False)
            )
        )

    pairs, pools = reports["pairs"], reports["pools"]
    figures = {
        "device": torch.cuda.get_device_name(),
        "dtype": "float16 (VAE float32)",
        "image_size": 512,
        "prompts": len(PROMPTS),
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "batch_size": cfg.batch_size,
        "pairs": {
            "images": pairs.images,
            "pairs": pairs.pairs,
            "seconds": round(pairs_s, 2),
            "images_per_s": round(pairs.images / pairs_s, 2),
            "max_memory_gib": round(pairs_gib, 2),
        },
        "plain_pipeline_same_images": {
            "images": pairs.images,
            "seconds": round(plain_pairs_s, 2),
            "images_per_s": round(pairs.images / plain_pairs_s, 2),
            "max_memory_gib": round(plain_pairs_gib, 2),
        },
        "pairs_over_plain_time": round(pairs_s / plain_pairs_s, 3),
        "step_pools": {
            "k": cfg.pool_k,
            "steps": list(cfg.steps_with_pools()),
            "chains": len(PROMPTS),
            "pools": pools.pools,
            "images": pools.images,
            "seconds": round(pools_s, 2),
            "images_per_s": round(pools.images / pools_s, 2),
            "seconds_per_chain": round(pools_s / len(PROMPTS), 3),
            "max_memory_gib": round(pools_gib, 2),
        },
        "plain_pipeline_one_image_per_prompt": {
            "images": len(PROMPTS),
            "seconds": round(plain_chain_s, 2),
            "max_memory_gib": round(plain_chain_gib, 2),
        },
        "pools_over_plain_chain_time": round(pools_s / plain_chain_s, 3),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
