"""Alignment on the shapes world: Diffusion-DPO and SPO from the shipped toy model with oracle feedback.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment.py data --home /tmp/align
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment.py dpo --home /tmp/align --set max_steps=600
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment.py spo --home /tmp/align --set max_steps=120
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment.py spm --home /tmp/align --name a --set max_steps=500
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment.py spo --home /tmp/align --spm a --etas 0 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment.py models --home /tmp/align --name rounds \
        --models /tmp/align-rounds/models/round-* --etas 0 1

``data`` samples candidates from the toy model on the training captions, lets the shapes oracle
judge every pair (AI feedback) and builds a dataset version. ``dpo`` trains Diffusion-DPO on that
version offline; ``spm`` trains the step-aware model from the shipped shapes-world scorer on that
version's final pairs; ``spo`` trains SPO online, judged by the oracle (``--set step_judge=completion``
judges each candidate's finished completion) or by an SPM (``--spm NAME``, whose CPU time counts in
SPO's). Each runs in this
process on one thread, so process CPU time is the compute used. Every checkpoint is then drawn on
the held-out captions with fixed seeds and compared with the base model by the oracle (win rate,
ties counting half), which gives the CPU time each recipe needed to reach a win rate. The trained
model is registered in the store with the base model as its parent. Results go to
``<home>/results/<recipe>-<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import StableDiffusionPipeline  # noqa: E402

from datastore.datasets import DatasetFilters, create_dataset_version, find_dataset_version  # noqa: E402
from datastore.errors import NotFoundError  # noqa: E402
from datastore.store import Store  # noqa: E402
from labeling.ai_feedback import label_with_scorer  # noqa: E402
from reward_models.shapes import ShapesOracle, held_out_captions, train_captions  # noqa: E402
from training import dpo, spm, spo  # noqa: E402
from training.config import DPOConfig, SPMConfig, SPOConfig  # noqa: E402
from training.lora import add_lora  # noqa: E402
from training.recipes import get_recipe  # noqa: E402
from training.runs import CHECKPOINT_PREFIX, Run  # noqa: E402
from workbench.evaluation import DEFAULT_GUIDANCE, score_pipeline, win_rate  # noqa: E402
from workbench.generation import generate_pairs  # noqa: E402
from workbench.generation_config import GenerationConfig  # noqa: E402
from workbench.registry import register_run  # noqa: E402
from workbench.toy import TOY_IMAGE_SIZE, TOY_MODEL_DIR, TOY_SCORER_DIR  # noqa: E402

DATASET = "shapes-oracle"
EVAL_SEEDS = (0, 1)


def load_toy() -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(TOY_MODEL_DIR, torch_dtype=torch.float32)


def prepare_data(store: Store, per_prompt: int, seed: int) -> dict:
    """Candidates on every training caption, oracle judgments, one dataset version (ties dropped)."""
    try:
        version = find_dataset_version(store, DATASET)
        return {"dataset": version.path.as_posix(), "reused": True}
    except NotFoundError:
        pass
    start = time.process_time()
    cfg = GenerationConfig(
        per_prompt=per_prompt, guidance_scale=DEFAULT_GUIDANCE, seed=seed, batch_size=64, pool_k=0
    )
    report = generate_pairs(store, load_toy(), "toy", train_captions(), cfg)
    generated = time.process_time()
    labels = label_with_scorer(store, ShapesOracle(), kinds=("final",))
    labelled = time.process_time()
    version = create_dataset_version(store, DATASET, DatasetFilters(kinds=("final",), include_ties=False))
    return {
        "dataset": version.path.as_posix(),
        "n_pairs": version.n_pairs,
        "images": report.images,
        "judgments": labels.judged,
        "ties": labels.ties,
        "generation_cpu_s": generated - start,
        "labelling_cpu_s": labelled - generated,
    }


def checkpoint_pipes(run_dir: Path, cfg: DPOConfig | SPOConfig, last_weights: bool = False):
    """Yields (step, pipeline) for every checkpoint: the toy model with that checkpoint's adapter, its
    weight average when the run keeps one (SPO's ``ema_decay``) unless `last_weights`."""
    full = getattr(cfg, "mode", "lora") == "full"
    for checkpoint in sorted((run_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")):
        pipe = load_toy()
        if (checkpoint / spo.AVERAGE).is_dir() and not last_weights:
            pipe.load_lora_weights(checkpoint / spo.AVERAGE)
        else:
            if not full:
                add_lora(pipe.unet, cfg, torch.device("cpu"), torch.float32)
            weights = load_file(checkpoint / "model.safetensors")
            missing, unexpected = pipe.unet.load_state_dict(weights, strict=False)
            if unexpected or (missing if full else any("lora" in name for name in missing)):
                raise RuntimeError(f"{checkpoint} does not hold this run's trained weights")
        yield int(checkpoint.name.split("-")[-1]), pipe


def evaluate(
    run_dir: Path,
    cfg,
    train_cpu_s: float,
    n_captions: int,
    etas: tuple[float, ...] = (0.0,),
    extra_cpu_s: float = 0.0,
    last_weights: bool = False,
) -> list[dict]:
    """Oracle win rate of every checkpoint against the base model on held-out captions, per sampler eta.

    ``extra_cpu_s`` is compute spent before the run (an SPM trained for SPO), added to every row;
    `last_weights` evaluates a checkpoint's last weights even where it holds a weight average.
    """
    captions = held_out_captions()[:n_captions]
    oracle = ShapesOracle()
    base = {eta: [s for _, _, s in score_pipeline(load_toy(), oracle, captions, EVAL_SEEDS, eta=eta)] for eta in etas}
    rows = []
    for step, pipe in checkpoint_pipes(run_dir, cfg, last_weights):
        for eta in etas:
            tuned = [s for _, _, s in score_pipeline(pipe, oracle, captions, EVAL_SEEDS, eta=eta)]
            result = win_rate(tuned, base[eta])
            rows.append(
                {
                    "step": step,
                    "eta": eta,
                    "train_cpu_s": extra_cpu_s + train_cpu_s * step / cfg.max_steps,  # steps cost alike
                    **result.summary(),
                    "tuned_all_correct": sum(s == 1.0 for s in tuned) / len(tuned),
                    "base_all_correct": sum(s == 1.0 for s in base[eta]) / len(base[eta]),
                    "tuned_mean_score": sum(tuned) / len(tuned),
                    "base_mean_score": sum(base[eta]) / len(base[eta]),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def evaluate_models(folders: list[Path], n_captions: int, etas: tuple[float, ...]) -> list[dict]:
    """Oracle win rate of full pipeline folders (e.g. a round's fused checkpoints) against the base model."""
    captions = held_out_captions()[:n_captions]
    oracle = ShapesOracle()
    base = {eta: [s for _, _, s in score_pipeline(load_toy(), oracle, captions, EVAL_SEEDS, eta=eta)] for eta in etas}
    rows = []
    for folder in folders:
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
        for eta in etas:
            tuned = [s for _, _, s in score_pipeline(pipe, oracle, captions, EVAL_SEEDS, eta=eta)]
            rows.append(
                {
                    "model": str(folder),
                    "eta": eta,
                    **win_rate(tuned, base[eta]).summary(),
                    "tuned_mean_score": sum(tuned) / len(tuned),
                    "base_mean_score": sum(base[eta]) / len(base[eta]),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def train_spm(store: Store, args, results: Path) -> None:
    """The step-aware model for SPO: from the shipped shapes-world scorer (or ``reward_model=PATH``), on the oracle-judged final pairs."""
    dataset = Path(prepare_data(store, args.per_prompt, args.seed)["dataset"])
    run_dir = args.home / "runs" / f"spm-{args.name}"
    cfg = SPMConfig(
        pretrained_model=str(TOY_MODEL_DIR),
        dataset=args.home / dataset if not dataset.is_absolute() else dataset,
        output_dir=run_dir,
        resolution=TOY_IMAGE_SIZE,
        **{"reward_model": str(TOY_SCORER_DIR), "guidance_scale": DEFAULT_GUIDANCE, **overrides(args.set)},
    )
    start = time.process_time()
    final = spm.main(cfg)
    summary = {
        "recipe": "spm",
        "final": str(final),
        "train_cpu_s": time.process_time() - start,
        "config": cfg.to_dict(),
        "metrics": [m for m in Run.open(run_dir).metrics() if any("eval_accuracy" in key for key in m)],
    }
    register_run(store, "spm", cfg, final)
    (results / f"spm-{args.name}.json").write_text(json.dumps(summary, indent=2, default=str))


def overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("data", "dpo", "spm", "spo", "evaluate", "models"))
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--name", default="default", help="Run name under <home>/runs/<recipe>-<name>.")
    parser.add_argument("--set", nargs="*", default=[], help="Recipe config overrides, key=json-value.")
    parser.add_argument("--per-prompt", type=int, default=4, help="Candidates per training caption (data).")
    parser.add_argument("--captions", type=int, default=432, help="Held-out captions to evaluate on.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0], help="Sampler etas to evaluate with.")
    parser.add_argument("--spm", help="spo: judge with the SPM of `spm --name SPM` (its CPU-s count in SPO's).")
    parser.add_argument("--models", type=Path, nargs="*", default=[], help="models: pipeline folders to evaluate.")
    parser.add_argument(
        "--last-weights", action="store_true", help="evaluate: a run's last weights where it keeps a weight average."
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = Store.open(args.home)
    results = args.home / "results"
    results.mkdir(exist_ok=True)
    if args.what == "data":
        summary = prepare_data(store, args.per_prompt, args.seed)
        (results / "data.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
        return

    if args.what == "spm":
        train_spm(store, args, results)
        return
    if args.what == "models":  # e.g. the fused checkpoints of `workbench round run --auto`
        rows = evaluate_models(args.models, args.captions, tuple(args.etas))
        (results / f"models-{args.name}.json").write_text(json.dumps(rows, indent=2))
        return
    if args.what == "evaluate":  # again, for a run trained earlier: --name dpo-NAME or spo-NAME
        summary = json.loads((results / f"{args.name}.json").read_text())
        cfg = get_recipe(summary["recipe"]).config_class.from_json(args.home / "runs" / args.name / "config.json")
        key = "checkpoints_last_weights" if args.last_weights else "checkpoints"
        summary[key] = evaluate(
            cfg.output_dir,
            cfg,
            summary["train_cpu_s"],
            args.captions,
            tuple(args.etas),
            summary.get("spm_cpu_s", 0.0),
            args.last_weights,
        )
        (results / f"{args.name}.json").write_text(json.dumps(summary, indent=2, default=str))
        return
    run_dir = args.home / "runs" / f"{args.what}-{args.name}"
    common = {"pretrained_model": str(TOY_MODEL_DIR), "output_dir": run_dir, "resolution": TOY_IMAGE_SIZE}
    if args.what == "dpo":
        dataset = Path(prepare_data(store, args.per_prompt, args.seed)["dataset"])
        cfg = DPOConfig(
            dataset=args.home / dataset if not dataset.is_absolute() else dataset,
            **common,
            **overrides(args.set),
        )
        recipe = dpo.main
    else:
        judge = {"scorer": "shapes-oracle"}
        if args.spm:
            spm_summary = json.loads((results / f"spm-{args.spm}.json").read_text())
            judge = {"scorer": f"spm:{spm_summary['final']}", "score_scale": 1.0}
        cfg = SPOConfig(
            prompts=tuple(train_captions()),
            **common,
            **{"guidance_scale": DEFAULT_GUIDANCE, **judge, **overrides(args.set)},
        )
        recipe = spo.main
    start = time.process_time()
    final = recipe(cfg)
    train_cpu_s = time.process_time() - start
    model_id = register_run(store, args.what, cfg, final)
    spm_cpu_s = spm_summary["train_cpu_s"] if args.what == "spo" and args.spm else 0.0
    rows = evaluate(run_dir, cfg, train_cpu_s, args.captions, tuple(args.etas), spm_cpu_s)
    summary = {
        "recipe": args.what,
        "model_id": model_id,
        "train_cpu_s": train_cpu_s,
        "spm_cpu_s": spm_cpu_s,
        "config": cfg.to_dict(),
        "checkpoints": rows,
    }
    (results / f"{args.what}-{args.name}.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
