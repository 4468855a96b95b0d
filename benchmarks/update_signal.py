"""How much of a preference update is signal: per-pair gradients of SPO and of Diffusion-DPO.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/update_signal.py \
        --dataset /tmp/align/x/datasets/shapes-oracle-deed1d47afa0 --spo-rounds 10 --dpo-pairs 400

At the shipped toy model with a fresh LoRA (SPO's default adapter, the same for both recipes), this
takes the gradient of each recipe's loss on one pair at a time:

- SPO: the kept pairs of ``--spo-rounds`` rounds as the recipe samples them (4 chains, pools at
  every step), by default judged by the oracle on each candidate's deterministic completion
  (``step_judge completion``): the labels are what the finished images show, so label noise plays
  no part (``--spo-set scorer=pickscore:workbench/toy/scorer score_scale=1 step_judge=x0`` measures
  the shapes world's PickScore judging predicted x0s instead);
- DPO: oracle-decided final-image pairs of a dataset snapshot (`benchmarks/alignment.py data`), each
  at its own timestep and noise, with the settings of the alignment runs (beta 5000, no mirroring).

For N per-pair gradients g_i it reports |E g|^2 (unbiased: (|sum g|^2 - sum |g_i|^2) / (N (N - 1))),
the noise tr Cov(g), and their ratio: the number of pairs whose mean gradient has a signal-to-noise
ratio of 1 (``pairs_for_snr_1``). The mean of n pairs points the expected way with
cos^2 ~ n / (n + pairs_for_snr_1). A split-half cosine (the means of two random halves) shows the
same thing without the estimator. Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDIMScheduler
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment import overrides  # noqa: E402

from reward_models.shapes import train_captions  # noqa: E402
from reward_models.spec import scorer_from_spec  # noqa: E402
from training import spo  # noqa: E402
from training.config import DPOConfig, SPOConfig  # noqa: E402
from training.data import preference_pairs  # noqa: E402
from training.dpo import make_batch, pair_losses  # noqa: E402
from training.features import Features  # noqa: E402
from training.lora import adapters_disabled, add_lora  # noqa: E402
from training.losses import spo_step_loss  # noqa: E402
from training.parts import load_parts  # noqa: E402
from workbench.evaluation import DEFAULT_GUIDANCE  # noqa: E402
from workbench.toy import TOY_IMAGE_SIZE, TOY_MODEL_DIR  # noqa: E402


def signal_statistics(grads: Tensor, seed: int = 0) -> dict[str, float]:
    """Signal, noise and pairs-for-SNR-1 of per-pair gradients, shape (N, P)."""
    n = len(grads)
    if n < 2:
        raise ValueError(f"signal statistics need at least 2 per-pair gradients, got {n}")
    total = grads.sum(0)
    signal = (total.dot(total) - (grads * grads).sum()) / (n * (n - 1))
    noise = ((grads - grads.mean(0)) ** 2).sum() / (n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    half_a, half_b = grads[order[: n // 2]].mean(0), grads[order[n // 2 :]].mean(0)
    return {
        "pairs": n,
        "signal": signal.item(),
        "noise": noise.item(),
        "pairs_for_snr_1": (noise / signal).item() if signal > 0 else float("inf"),
        "split_half_cosine": torch.nn.functional.cosine_similarity(half_a, half_b, dim=0).item(),
    }


def flat_grad(params: list[torch.nn.Parameter]) -> Tensor:
    """The parameters' gradients as one vector; the gradients are cleared."""
    grad = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in params])
    for p in params:
        p.grad = None
    return grad


def spo_gradients(
    parts, unet, params, cfg: SPOConfig, rounds: int, accelerator: Accelerator
) -> tuple[Tensor, float]:
    """Per-pair SPO step-loss gradients of `rounds` sampled rounds, and the CPU-s spent sampling and judging."""
    features = Features(parts, cfg.resolution, accelerator.device)
    scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)
    scheduler.set_timesteps(cfg.num_inference_steps)
    prompts, scorer = list(cfg.prompts), scorer_from_spec(cfg.scorer)
    grads, sample_cpu_s = [], 0.0
    for step in range(rounds):
        started = time.process_time()
        with torch.no_grad():
            pairs, _, text = spo.sample_round(
                unet, parts, scheduler, features, prompts, scorer, cfg, step, accelerator
            )
        sample_cpu_s += time.process_time() - started
        for i in range(len(pairs)):
            pair = pairs.take(slice(i, i + 1))
            pair_text = text.select(pair.chain)
            with torch.no_grad(), adapters_disabled(unet):
                reference = spo.transition_densities(unet, pair, pair_text, scheduler, cfg, accelerator)
            logp = spo.transition_densities(unet, pair, pair_text, scheduler, cfg, accelerator)
            loss, _ = spo_step_loss(*logp, *reference, beta=cfg.beta, clip=cfg.clip_range)
            loss.sum().backward()
            grads.append(flat_grad(params))
    return torch.stack(grads), sample_cpu_s


def dpo_gradients(parts, unet, params, cfg: DPOConfig, n_pairs: int, accelerator: Accelerator) -> Tensor:
    """Per-pair Diffusion-DPO loss gradients of the first `n_pairs` pairs of the dataset's stream."""
    pairs = preference_pairs(cfg.dataset)
    features = Features(parts, cfg.resolution, accelerator.device)
    grads = []
    for position in range(n_pairs):
        batch = make_batch(pairs, features, parts.noise_scheduler, cfg, range(position, position + 1))
        loss, _ = pair_losses(batch, unet, unet, None, parts.noise_scheduler, cfg, accelerator)
        loss.sum().backward()
        grads.append(flat_grad(params))
    return torch.stack(grads)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", type=Path, required=True, help="A dataset snapshot of oracle-decided pairs."
    )
    parser.add_argument("--spo-rounds", type=int, default=10)
    parser.add_argument("--dpo-pairs", type=int, default=400)
    parser.add_argument(
        "--spo-set",
        nargs="*",
        default=[],
        help="SPOConfig overrides, key=json-value (another judge: scorer=...).",
    )
    parser.add_argument("--out", type=Path, default=Path("update_signal.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    accelerator = Accelerator(mixed_precision="no")
    scratch = Path(tempfile.mkdtemp(prefix="update-signal-"))
    common = {"pretrained_model": str(TOY_MODEL_DIR), "resolution": TOY_IMAGE_SIZE}
    oracle_completion = {"scorer": "shapes-oracle", "score_scale": 10.0, "step_judge": "completion"}
    spo_cfg = SPOConfig(
        **common,
        output_dir=scratch / "spo",
        prompts=tuple(train_captions()),
        guidance_scale=DEFAULT_GUIDANCE,
        prompts_per_step=4,
        warmup_steps=0,
        max_timestep=951,
        **{**oracle_completion, **overrides(args.spo_set)},
    )
    dpo_cfg = DPOConfig(
        **common, output_dir=scratch / "dpo", dataset=args.dataset, beta=5000.0, random_flip=False
    )

    parts = load_parts(TOY_MODEL_DIR)
    unet = parts.unet
    add_lora(unet, spo_cfg, accelerator.device, torch.float32)  # one adapter for both recipes' gradients
    params = [p for p in unet.parameters() if p.requires_grad]

    started = time.process_time()
    spo_grads, spo_sample_cpu_s = spo_gradients(parts, unet, params, spo_cfg, args.spo_rounds, accelerator)
    spo_grad_cpu_s = time.process_time() - started - spo_sample_cpu_s
    started = time.process_time()
    dpo_grads = dpo_gradients(parts, unet, params, dpo_cfg, args.dpo_pairs, accelerator)
    dpo_grad_cpu_s = time.process_time() - started

    result = {
        "spo": {
            **signal_statistics(spo_grads),
            "sample_and_judge_cpu_s_per_pair": spo_sample_cpu_s / len(spo_grads),
            "gradient_cpu_s_per_pair": spo_grad_cpu_s / len(spo_grads),
        },
        "dpo": {**signal_statistics(dpo_grads), "gradient_cpu_s_per_pair": dpo_grad_cpu_s / len(dpo_grads)},
        "cosine_of_means": torch.nn.functional.cosine_similarity(
            spo_grads.mean(0), dpo_grads.mean(0), dim=0
        ).item(),
        "parameters": spo_grads.shape[1],
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
