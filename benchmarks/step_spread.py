"""Where the shapes world decides: at which DDIM step of the toy model the final image's attributes are settled.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_spread.py --prompts 48 --continuations 4

For every step s of the toy model's 20-step chain (guidance 5, eta 1, as SPO samples), one chain
per held-out caption is run to the state after s - 1 steps. From that fixed state:
- "one step": k candidates of the next state are drawn (a pool, `training.sampling.denoise`) and
  each is completed deterministically (DDIM eta 0): how much the choice SPO makes at step s alone
  changes the finished image;
- "rest of chain": k independent eta-1 continuations to the end: how much is still open at s.
The oracle judges every finished image. Per step the table gives the mean range (max - min) of the
final oracle scores over the k continuations, and per attribute the share of chains whose k
continuations disagree on it. Results go to ``--out`` (JSON) and stdout (a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import StableDiffusionPipeline  # noqa: E402

from reward_models.shapes import check, held_out_captions  # noqa: E402
from training.sampling import complete, decode, denoise, latent_shape  # noqa: E402
from workbench.generation import ddim_scheduler  # noqa: E402
from workbench.generation_config import GenerationConfig  # noqa: E402
from workbench.sampling import encode_prompts  # noqa: E402
from workbench.toy import TOY_IMAGE_SIZE, TOY_MODEL_DIR  # noqa: E402

ATTRIBUTES = ("colour", "shape", "position", "size")


def judge(pipe: StableDiffusionPipeline, latents: torch.Tensor, prompts: list[str]) -> list[dict[str, bool]]:
    """Per-attribute oracle checks of finished latents."""
    return [
        check(image, prompt) for image, prompt in zip(decode(pipe.vae, latents, 256), prompts, strict=True)
    ]


def spread(checks: list[dict[str, bool]], n_chains: int, k: int) -> dict[str, float]:
    """Mean score range over each chain's k continuations, and per attribute the share of chains that disagree."""
    scores = np.array([np.mean(list(c.values())) for c in checks]).reshape(n_chains, k)
    out = {"score_range": float((scores.max(1) - scores.min(1)).mean()), "score_mean": float(scores.mean())}
    for name in ATTRIBUTES:
        values = np.array([c.get(name, True) for c in checks]).reshape(n_chains, k)
        out[f"{name}_open"] = float((values.any(1) & ~values.all(1)).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=48, help="Held-out captions, one chain each.")
    parser.add_argument("--continuations", type=int, default=4, help="k continuations per fixed state.")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the chain.")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("step_spread.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    pipe = StableDiffusionPipeline.from_pretrained(TOY_MODEL_DIR, torch_dtype=torch.float32)
    captions = list(held_out_captions())
    prompts = [
        captions[i]
        for i in np.random.default_rng(args.seed).choice(len(captions), args.prompts, replace=False)
    ]
    cfg = GenerationConfig(num_inference_steps=args.steps, guidance_scale=args.guidance, eta=1.0)
    scheduler = ddim_scheduler(pipe, cfg)
    text = encode_prompts(pipe, prompts, height=TOY_IMAGE_SIZE, width=TOY_IMAGE_SIZE)
    shape = latent_shape(pipe.unet, pipe.vae, TOY_IMAGE_SIZE, TOY_IMAGE_SIZE)
    n, k, b = args.steps, args.continuations, len(prompts)
    repeated = text.select(torch.arange(b).repeat_interleave(k))
    per_candidate = [p for p in prompts for _ in range(k)]
    started = time.process_time()

    # One chain per caption with a pool at every step: pool s holds the state after s - 1 steps
    # (its parent) and k candidates of the state after s.
    _, pools = denoise(
        pipe.unet,
        scheduler,
        text,
        [torch.Generator().manual_seed(args.seed * 100_003 + i) for i in range(b)],
        shape=shape,
        guidance_scale=args.guidance,
        eta=1.0,
        pool_steps=range(1, n + 1),
        k=k,
    )
    rows = []
    for pool in pools:
        one_step = complete(
            pipe.unet,
            scheduler,
            repeated,
            pool.candidates.flatten(0, 1),
            from_step=pool.step,
            guidance_scale=args.guidance,
        )
        generators = [
            torch.Generator().manual_seed(args.seed * 7_919 + pool.step * 1_009 + j) for j in range(b * k)
        ]
        rest = complete(
            pipe.unet,
            scheduler,
            repeated,
            pool.parent.repeat_interleave(k, dim=0),
            from_step=pool.step - 1,
            guidance_scale=args.guidance,
            eta=1.0,
            generators=generators,
        )
        row = {"step": pool.step, "t": pool.parent_timestep}
        row.update(
            {f"one_{key}": value for key, value in spread(judge(pipe, one_step, per_candidate), b, k).items()}
        )
        row.update(
            {f"rest_{key}": value for key, value in spread(judge(pipe, rest, per_candidate), b, k).items()}
        )
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    result = {
        "args": {k_: str(v) for k_, v in vars(args).items()},
        "cpu_s": time.process_time() - started,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=1))

    header = "| step | t | one step: score range | colour | shape | position | size | rest of chain: score range | colour | shape | position | size |"
    print(header)
    print("|" + "---|" * 12)
    for r in rows:
        cells = [r["step"], r["t"]]
        for prefix in ("one", "rest"):
            cells.append(f"{r[f'{prefix}_score_range']:.3f}")
            cells += [f"{100 * r[f'{prefix}_{name}_open']:.0f} %" for name in ATTRIBUTES]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
