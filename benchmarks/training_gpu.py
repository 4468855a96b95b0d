"""DPO and SPO training speed on one GPU: SD1.5-shaped UNet at 512 px and SDXL-shaped at 1024 px, random weights.

    .venv/bin/python benchmarks/training_gpu.py --out benchmarks/out/training_gpu.json
    .venv/bin/python benchmarks/training_gpu.py --tiny     # the same cases on tiny shapes (CPU too)

Builds the pipelines' components in memory with random weights (nothing is downloaded, nothing is
saved): SD1.5's UNet (320/640/1280/1280, cross-attention 768), VAE and CLIP-L text encoder; SDXL's
UNet (320/640/1280, 2 and 10 transformer layers, cross-attention 2048, text-time embedding), VAE
and both text encoders (CLIP-L and bigG). Random weights compute what real weights of the same
shapes compute, so the timings hold for real checkpoints. The training images are random PNGs of
the target size.

Every case runs in a fresh process (its own CUDA context, peak memory and compile cache) and
reports pairs/s over ``--steps`` steps after ``--warmup`` steps (the first of which compiles, when
compiling: its time is reported on its own), peak ``torch.cuda.max_memory_allocated``, the model
FLOPs of a step from ``torch.utils.flop_counter`` (the UNet calls of the loss and their backward;
the same for both configurations of a case) and MFU against ``--peak-tflops`` (default: 989, the
dense bf16 peak of an H100/H200 SXM; pass the fp32 or your GPU's figure to compare otherwise).

Cases, each against the straightforward configuration of the same recipe in the same run
(`straightforward.straightforward_dpo`: fp32, latents and text embeddings encoded every step, a
separate reference UNet, four UNet calls, default AdamW, a host sync per step):
- SD1.5 DPO LoRA and full: ours in bf16 (the recipe's step: cached features, one call for winner
  and loser, the adapter-off reference for LoRA, fused AdamW, no host sync), in fp16, with the
  classic attention processor instead of SDPA, and compiled;
- SDXL DPO LoRA: ours in bf16, with gradient checkpointing, compiled; the straightforward
  configuration in fp32 (it may not fit at the batch size: reported as out of memory);
- SD1.5 SPO at 512 px through its recipe (`training.spo.main` on an SD1.5-shaped pipeline folder
  written by `sd_shapes.save_pipeline`, the SPOConfig defaults: 4 chains of 20 DDIM steps, k = 4):
  ours with mixed precision bf16 (``no`` on the CPU) against the straightforward fp32 run with
  the official code's update (`straightforward.straightforward_spo_training`). From
  the run's metrics.jsonl over ``--spo-steps`` steps after the first (timed on its own): pairs
  kept per second and seconds per step in sampling (chains, pools, decoding, scoring) and in
  training. The scorer is `Brightness` at threshold 0, so every pool whose candidates differ keeps
  its pair: the figure measures SPO's work, not a scorer's judgment.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))
sys.path.insert(0, str(BENCHMARKS))

from accelerate import Accelerator  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor  # noqa: E402
from figures import FreshProcessError, publish, run_fresh  # noqa: E402
from PIL import Image  # noqa: E402
from sd_shapes import build_parts, save_pipeline  # noqa: E402
from straightforward import Trainer, straightforward_dpo, straightforward_update  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from reward_models.base import Scorer  # noqa: E402
from training import dpo, spo  # noqa: E402
from training.config import DPOConfig, SPOConfig  # noqa: E402
from training.data import PreferencePair  # noqa: E402
from training.features import Features, cached_features  # noqa: E402
from training.parts import DTYPES, Parts  # noqa: E402
from training.runs import Run  # noqa: E402
from training.sampling import native_side  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0
SPO_PROMPTS = tuple(f"a red circle number {i}" for i in range(16))
TINY_SPO = {"prompts_per_step": 2, "num_inference_steps": 4, "num_candidates": 2, "warmup_steps": 1}
"""The SPO workload with --tiny; without it the SPOConfig defaults."""


def write_pairs(folder: Path, n: int, side: int) -> list[PreferencePair]:
    """``n`` pairs of random PNGs of ``side`` pixels and a snapshot manifest for the feature cache."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        paths = []
        for side_name in ("w", "l"):
            path = folder / f"{i}-{side_name}.png"
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        pairs.append(PreferencePair(i, f"a red circle number {i}", *paths))
    (folder / "manifest.json").write_text(json.dumps({"content_hash": f"random-{n}-{side}"}))
    return pairs


def run_dpo_case(case: dict) -> dict:
    """One DPO configuration: builds it, counts the FLOPs of a step, warms up, times ``steps`` steps."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    root = Path(case["root"])
    parts, side = build_parts(case["family"], case["tiny"], device)
    data = root / f"pairs-{case['family']}-{side}"
    pairs = write_pairs(data, case["pairs"], side)
    cfg = DPOConfig(
        pretrained_model=case["family"],
        dataset=data,
        output_dir=root / case["name"],
        mode=case["mode"],
        resolution=side,
        batch_size=case["batch"],
        mixed_precision=case["precision"],
        gradient_checkpointing=case["checkpointing"],
        learning_rate=1e-5,
    )
    if case["attention"] == "classic":
        parts.unet.set_attn_processor(AttnProcessor())
    build = straightforward_dpo if case["variant"] == "straightforward" else ours
    trainer = build(cfg, parts, pairs, device)

    batch, counter = trainer.batch(0), FlopCounterMode(display=False)
    with counter:
        trainer.loss(batch).backward()
    flops = float(counter.get_total_flops())
    trainer.unet.zero_grad(set_to_none=True)
    if case["compile"]:
        for model in (trainer.unet, trainer.reference):
            if model is not None:
                model.compile()

    def timed(steps: range) -> float:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for i in steps:
            trainer.step(i)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    first_step_s = timed(range(1))
    timed(range(1, case["warmup"]))
    seconds = timed(range(case["warmup"], case["warmup"] + case["steps"]))
    tflops = flops * case["steps"] / seconds / 1e12
    return {
        **case,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "pairs_per_s": round(case["steps"] * cfg.batch_size / seconds, 3),
        "first_step_s": round(first_step_s, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "model_gflop_per_step": round(flops / 1e9, 3),
        "achieved_tflops": float(f"{tflops:.4g}"),
        "mfu": float(f"{tflops / case['peak_tflops']:.4g}"),
    }


def ours(cfg: DPOConfig, parts: Parts, pairs: list[PreferencePair], device: torch.device) -> Trainer:
    """The recipe's step as `training.dpo.main` runs it, on components built in memory."""
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    weight_dtype = DTYPES[cfg.mixed_precision]
    for module in (parts.text_encoder, parts.text_encoder_2):
        if module is not None:
            module.to(device, weight_dtype)
    parts.vae.to(device, torch.float32)
    features = cached_features(Features(parts, cfg.resolution, device), pairs, cfg, accelerator)
    del parts.vae, parts.text_encoder, parts.text_encoder_2
    unet = parts.unet
    reference = dpo.trainable_unet(unet, cfg, device, weight_dtype)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    prepared, optimizer = accelerator.prepare(unet, optimizer)

    def batch(i: int) -> dpo.Batch:
        positions = range(i * cfg.batch_size, (i + 1) * cfg.batch_size)
        return dpo.make_batch(pairs, features, parts.noise_scheduler, cfg, positions)

    def loss(batch: dpo.Batch) -> torch.Tensor:
        return dpo.pair_losses(batch, prepared, unet, reference, parts.noise_scheduler, cfg, accelerator)[
            0
        ].mean()

    def step(i: int) -> None:
        accelerator.backward(loss(batch(i)))
        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()

    return Trainer(unet, reference, batch, loss, step)


class Brightness(Scorer):
    """Mean pixel value in [0, 1]: a cheap deterministic scorer for random-weight images.

    Candidates drawn from the same x_t decode to different pixels, so their scores differ and at
    threshold 0 every pool keeps its pair (the shapes oracle mostly ties on such images, and a tied
    pool keeps no pair at any threshold).
    """

    name = "brightness"
    version = "1"

    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[str], timesteps: Sequence[int] | None = None
    ) -> np.ndarray:
        self._check_lengths(images, prompts, timesteps)
        return np.array([np.asarray(image, dtype=np.float64).mean() / 255 for image in images])


def run_spo_case(case: dict) -> dict:
    """One SPO configuration through `training.spo.main`: ``1 + steps`` steps, figures from metrics.jsonl."""
    cuda = torch.cuda.is_available()
    root = Path(case["root"]) / case["name"]
    pipeline = root / "pipeline"
    save_pipeline(pipeline, "sd15", case["tiny"], torch.device("cuda" if cuda else "cpu"))
    unet = json.loads((pipeline / "unet" / "config.json").read_text())
    vae = json.loads((pipeline / "vae" / "config.json").read_text())
    cfg = SPOConfig(
        pretrained_model=str(pipeline),
        output_dir=root / "run",
        prompts=SPO_PROMPTS,
        resolution=native_side(unet, vae),
        mixed_precision=case["precision"],
        threshold=0.0,
        max_steps=1 + case["steps"],
        **case["workload"],
    )
    with straightforward_update(case["variant"] == "straightforward", cfg.pretrained_model):
        spo.main(cfg, Brightness())
    first, *timed = Run.open(cfg.output_dir).metrics()
    pairs = sum(m["pairs"] for m in timed)
    sample_s, train_s = (sum(m[name] for m in timed) for name in ("sample_s", "train_s"))
    return {
        **case,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "resolution": cfg.resolution,
        "pairs_per_s": float(f"{pairs / (sample_s + train_s):.4g}"),
        "pairs_per_step": pairs / len(timed),
        "pools_per_step": sum(m["pools"] for m in timed) / len(timed),
        "sample_s_per_step": float(f"{sample_s / len(timed):.4g}"),
        "train_s_per_step": float(f"{train_s / len(timed):.4g}"),
        "first_step_s": round(first["sample_s"] + first["train_s"], 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def in_fresh_process(case: dict) -> dict:
    """Runs one case in a new process with its own inductor cache; a case that runs out of GPU
    memory is reported as such."""
    inductor = str(Path(case["root"]) / f"inductor-{case['name']}")
    try:
        return run_fresh(__file__, "--case", case, f"case {case['name']}", TORCHINDUCTOR_CACHE_DIR=inductor)
    except FreshProcessError as e:
        if "OutOfMemoryError" in str(e) or "out of memory" in str(e):
            return {**case, "out_of_memory": True}
        raise


def cases(args: argparse.Namespace, cuda: bool) -> list[dict]:
    """Every case of the benchmark; names say family, recipe and configuration, ``group`` the first two."""
    sd_batch = 2 if args.tiny else args.sd15_batch
    xl_batch = 2 if args.tiny else args.sdxl_batch
    base = {
        "tiny": args.tiny,
        "steps": args.steps,
        "warmup": args.warmup,
        "pairs": 2 * max(sd_batch, xl_batch),
        "recipe": "dpo",
    }
    base |= {"peak_tflops": args.peak_tflops, "attention": "sdpa", "compile": False, "checkpointing": False}
    out = []
    for mode in ("lora", "full") if "sd15" in args.families and "dpo" in args.recipes else ():
        sd = {**base, "family": "sd15", "group": f"sd15-{mode}", "mode": mode, "batch": sd_batch}
        out += [
            {**sd, "name": f"sd15-{mode}-straightforward", "variant": "straightforward", "precision": "no"},
            {**sd, "name": f"sd15-{mode}-ours-bf16", "variant": "ours", "precision": "bf16"},
            {**sd, "name": f"sd15-{mode}-ours-fp16", "variant": "ours", "precision": "fp16"},
            {**sd, "name": f"sd15-{mode}-ours-bf16-classic-attention", "variant": "ours", "precision": "bf16",
             "attention": "classic"},
        ]  # fmt: skip
        if args.compile:
            out.append({**sd, "name": f"sd15-{mode}-ours-bf16-compiled", "variant": "ours", "precision": "bf16",
                        "compile": True})  # fmt: skip
    if "sdxl" in args.families and "dpo" in args.recipes:
        xl = {**base, "family": "sdxl", "group": "sdxl-lora", "mode": "lora", "batch": xl_batch}
        out += [
            {**xl, "name": "sdxl-lora-straightforward", "variant": "straightforward", "precision": "no"},
            {**xl, "name": "sdxl-lora-ours-bf16", "variant": "ours", "precision": "bf16"},
            {**xl, "name": "sdxl-lora-ours-bf16-checkpointing", "variant": "ours", "precision": "bf16",
             "checkpointing": True},
        ]  # fmt: skip
        if args.compile:
            out.append({**xl, "name": "sdxl-lora-ours-bf16-compiled", "variant": "ours", "precision": "bf16",
                        "compile": True})  # fmt: skip
    if "sd15" in args.families and "spo" in args.recipes:
        sp = {"tiny": args.tiny, "recipe": "spo", "family": "sd15", "group": "sd15-spo"}
        sp |= {"steps": 1 if args.tiny else args.spo_steps, "workload": TINY_SPO if args.tiny else {}}
        out += [
            {**sp, "name": "sd15-spo-straightforward", "variant": "straightforward", "precision": "no"},
            {**sp, "name": "sd15-spo-ours", "variant": "ours", "precision": "bf16" if cuda else "no"},
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument(
        "--tiny", action="store_true", help="Tiny shapes (runs on the CPU when there is no GPU)."
    )
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per case.")
    parser.add_argument(
        "--warmup", type=int, default=3, help="Untimed steps first (compilation happens here)."
    )
    parser.add_argument(
        "--spo-steps", type=int, default=3, help="Timed SPO steps after an untimed one (1 with --tiny)."
    )
    parser.add_argument("--sd15-batch", type=int, default=16, help="Pairs per step at 512 px.")
    parser.add_argument("--sdxl-batch", type=int, default=4, help="Pairs per step at 1024 px.")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--compile", action="store_true", help="Also the compiled cases.")
    parser.add_argument(
        "--families",
        nargs="+",
        default=["sd15", "sdxl"],
        choices=["sd15", "sdxl"],
        help="Which shapes to run (one family per command keeps a run under 10 minutes on one GPU).",
    )
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=["dpo", "spo"],
        choices=["dpo", "spo"],
        help="Which recipes to run (SPO: SD1.5 only).",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="Run the DPO cases in this process (quick check; accelerate then allows one mixed precision, "
        "so only without fp16 cases, as on the CPU). SPO cases still run in a fresh process each: "
        "spo.main makes its own Accelerator, and their precisions differ from the DPO cases'.",
    )
    parser.add_argument("--out", type=Path, help="Write the figures as JSON here too.")
    args = parser.parse_args()
    if args.case:
        case = json.loads(args.case)
        print(json.dumps((run_spo_case if case["recipe"] == "spo" else run_dpo_case)(case)))
        return
    cuda = torch.cuda.is_available()
    if not args.tiny and not cuda:
        sys.exit("no CUDA device: run with --tiny for the CPU check, or on a GPU machine")
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for case in cases(args, cuda):
            if case["precision"] == "fp16" and not cuda:
                continue  # accelerate autocasts fp16 on CUDA only
            case["root"] = tmp
            in_process = args.in_process and case["recipe"] == "dpo"
            results.append(run_dpo_case(case) if in_process else in_fresh_process(case))
            print(json.dumps(results[-1]), flush=True)
    by_name = {r["name"]: r for r in results}
    for r in results:
        straight = by_name.get(f"{r['group']}-straightforward")
        if straight and "pairs_per_s" in straight and "pairs_per_s" in r:
            r["vs_straightforward"] = round(r["pairs_per_s"] / straight["pairs_per_s"], 2)
    figures = {"tiny": args.tiny, "cases": results}
    publish(figures, args.out)


if __name__ == "__main__":
    main()
