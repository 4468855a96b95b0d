"""The stages that make a round's model: ``training`` (the round recipe's training recipes, in this
process, in ``runs/round-<id>-<recipe>/``), ``checkpoint`` (a LoRA result fused into the parent and
saved whole as ``models/round-<id>/``) and ``register`` (the checkpoint as a model row with its
lineage, parent of the next round).

Each stage takes the `RoundContext` and returns the JSON-ready record of what it did.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from datastore.records import register_model
from training.config import ConfigError, DPOConfig, RecipeConfig
from training.recipes import get_recipe, recipe_of
from training.runs import Run
from workbench.registry import register_run
from workbench.rounds.config import DPO_DEFAULTS, SPM_DEFAULTS, SPM_SPO_DEFAULTS, SPO_DEFAULTS
from workbench.rounds.context import RoundContext
from workbench.rounds.errors import RoundError

RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    # A DPO round checkpoints once, at its last step (see `_train`).
    "dpo": {**DPO_DEFAULTS, "checkpoint_every": 10_000},
    "spo": SPO_DEFAULTS,
    "spm": SPM_DEFAULTS,
}
"""Per training recipe, the round's settings under its ``training`` options."""


def native_resolution(model_path: str) -> int:
    """Image side the model draws natively (UNet sample size x VAE factor), read from its configs."""
    from training.sampling import native_side

    root = Path(model_path)
    return native_side(*(json.loads((root / part / "config.json").read_text()) for part in ("unet", "vae")))


def _train(
    name: str, defaults: dict[str, Any], options: dict[str, Any], inputs: dict[str, Any]
) -> tuple[RecipeConfig, Path]:
    """Runs training recipe ``name`` with ``defaults`` < the round's ``options`` < its ``inputs``
    (those of them the recipe's config has) and returns its config and final weights."""
    recipe = get_recipe(name)
    known = {f.name for f in dataclasses.fields(recipe.config_class)}
    values = {**defaults, **options, **{k: v for k, v in inputs.items() if k in known}}
    try:
        cfg = recipe.config_class(**values)
        if isinstance(cfg, DPOConfig):
            cfg = dataclasses.replace(cfg, checkpoint_every=min(cfg.checkpoint_every, cfg.max_steps))
    except (ConfigError, TypeError) as e:
        raise RoundError(f"{recipe.config_class.__name__}: {e}") from e
    return cfg, recipe.run(cfg)


def training(ctx: RoundContext) -> dict:
    """Trains on the round's data from its parent: DPO, SPO, or the SPM and then SPO with it."""
    from workbench.pipelines import checkpoint_folder

    config, results = ctx.config, ctx.results
    parent_path = checkpoint_folder(ctx.store, ctx.parent_model_id)
    run_dir = ctx.store.runs_dir / f"round-{ctx.round_id}-{config.recipe}"
    with ctx.store.write() as con:
        con.execute("UPDATE rounds SET run_dir = ? WHERE id = ?", [str(run_dir), ctx.round_id])
    started = time.perf_counter()
    inputs = {
        "pretrained_model": parent_path,
        "dataset": Path(results["dataset"]["path"]),
        "output_dir": run_dir,
        "prompts": tuple(results["generation"]["prompts"]),
        "scorer": config.scorer,
    }
    common = {
        "resolution": native_resolution(parent_path) if Path(parent_path).is_dir() else 512,
        "seed": results["generation"]["seed"],
    }
    # SPO draws its chains with the round's guidance, as the candidates and the evaluation are drawn.
    spo_common = {**common, "guidance_scale": config.generation.guidance_scale}
    record: dict[str, Any] = {"recipe": config.recipe, "run_dir": str(run_dir)}
    if config.recipe == "spm-spo":
        spm_cfg, spm_final = _train(
            "spm",
            {**common, **RECIPE_DEFAULTS["spm"]},
            config.training,
            {**inputs, "output_dir": run_dir / "spm"},
        )
        record.update(spm_config=spm_cfg.to_dict(), spm_final=str(spm_final))
        cfg, final = _train(
            "spo",
            {**spo_common, **SPM_SPO_DEFAULTS},
            config.spo_training,
            {**inputs, "output_dir": run_dir / "spo", "scorer": f"spm:{spm_final}"},
        )
    else:
        shared = spo_common if config.recipe == "spo" else common
        cfg, final = _train(config.recipe, {**shared, **RECIPE_DEFAULTS[config.recipe]}, config.training, inputs)
    record.update(config=cfg.to_dict(), lora=recipe_of(cfg).output_kind(cfg) == "lora", final=str(final))
    record["seconds"] = round(time.perf_counter() - started, 2)
    run = Run.open(cfg.output_dir)
    record["metrics_file"] = str(run.metrics_file)
    metrics = run.metrics()
    record["last_metrics"] = metrics[-1] if metrics else {}
    return record


def checkpoint(ctx: RoundContext) -> dict:
    """A LoRA result fused into the parent and saved as a full pipeline folder, ``models/round-<id>/``.

    Fusing (rather than stacking adapters) keeps every registered checkpoint a plain
    ``from_pretrained`` folder, so the next round trains a fresh LoRA on it and any checkpoint loads
    without its ancestors. The LoRA weights stay in the run folder.
    """
    from datastore.atomic import replace_folder
    from workbench.pipelines import fuse_lora, load_model

    trained = ctx.results["training"]
    if not trained["lora"]:
        return {"path": trained["final"], "fused": False}
    folder = ctx.store.models_dir / f"round-{ctx.round_id}"
    if not folder.exists():  # written whole by an earlier attempt that stopped before recording it
        pipe = fuse_lora(load_model(ctx.store, ctx.parent_model_id, device="cpu"), trained["final"])
        replace_folder(pipe.save_pretrained, folder)
    return {"path": str(folder), "fused": True, "lora": trained["final"]}


def register(ctx: RoundContext) -> dict:
    """The checkpoint (and a round's step-aware model) as registered models; the round's metrics."""
    results, round_id = ctx.results, ctx.round_id
    evaluation, trained = results["evaluation"], results["training"]
    scorer_id = None
    if "spm_final" in trained:
        # The round's step-aware model, a scorer whose parent is the CLIP it started from.
        spm_config = get_recipe("spm").config_class.from_dict(trained["spm_config"])
        scorer_id = register_run(ctx.store, "spm", spm_config, Path(trained["spm_final"]), round_id=round_id)
    with ctx.store.write() as con:
        model_id = register_model(
            con,
            f"round-{round_id}",
            results["checkpoint"]["path"],
            kind="full",
            parent_id=ctx.parent_model_id,
            round_id=round_id,
            dataset_version=results["dataset"]["id"],
            metadata={
                "recipe": ctx.config.recipe,
                "run_dir": trained["run_dir"],
                "trained_as": "lora" if trained["lora"] else "full",
                "lora": results["checkpoint"].get("lora"),
                "dataset_hash": results["dataset"]["content_hash"],
                "step_scorer_id": scorer_id,
            },
        )
        con.execute("UPDATE rounds SET model_id = ? WHERE id = ?", [model_id, round_id])
        con.executemany(
            "INSERT INTO metrics (round_id, model_id, name, value) VALUES (?, ?, ?, ?)",
            [
                [round_id, model_id, "win_rate_vs_parent", evaluation["vs_parent"]["win_rate"]],
                [round_id, model_id, "win_rate_vs_base", evaluation["vs_base"]["win_rate"]],
                [round_id, model_id, "eval_mean_score", evaluation["candidate_mean"]],
            ],
        )
    return {"model_id": model_id, "name": f"round-{round_id}", "scorer_id": scorer_id}
