"""`workbench generate`: candidate pairs and SPO step pools from a diffusers pipeline, into the store."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Literal

import typer

from workbench.cli.common import console, open_store, user_errors
from workbench.cli.options import Override, with_config_options
from workbench.errors import GenerationError
from workbench.generation import generate_pairs, generate_step_pools
from workbench.generation_config import GenerationConfig, read_prompts
from workbench.toy import TOY_MODEL_DIR, train_captions

# Where `workbench generate`'s options differ from GenerationConfig's fields.
OVERRIDES = {
    "pool_k": Override(
        0, "k: also draw SPO step pools of k candidates at each of --steps (0: no pools).", flag="step-pools"
    ),
    "pool_steps": Override(
        help="Comma-separated. " + GenerationConfig.__dataclass_fields__["pool_steps"].metadata["help"],
        flag="steps",
        annotation=str | None,
    ),
    "seed": Override(help="Base seed (default: a fresh one, printed)."),
}


def _parse_steps(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError as e:
        raise GenerationError(
            f"--steps must be comma-separated step numbers such as 4,8,12, got {text!r}"
        ) from e


def generate(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None,
        "--model",
        help="Pipeline to sample from: a save_pretrained folder or a hub id (SD1.5 / SDXL family).",
    ),
    prompts_file: Path | None = typer.Option(
        None,
        "--prompts",
        help='Prompts file: one prompt per line, or JSON Lines with a "prompt" field (.jsonl).',
    ),
    toy: bool = typer.Option(
        False,
        "--toy",
        help="Use the shipped toy model; without --prompts, on the shapes world's training captions.",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N prompts."),
    model_name: str | None = typer.Option(
        None, "--model-name", help="Name to register the model under (default: --model as given, or 'toy')."
    ),
    device: str | None = typer.Option(
        None, "--device", help="Torch device (default: cuda when present, else cpu)."
    ),
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = typer.Option(
        "auto", "--dtype", help="Weight precision; auto = float16 on CUDA, float32 on the CPU."
    ),
    **options: Any,
) -> None:
    """Generate candidate images for prompts: final pairs and/or SPO noisy-step pools, stored for judging."""
    import torch

    from workbench.pipelines import load_pipeline

    with user_errors():
        if (model is None) == (not toy):
            raise GenerationError("give either --model PATH_OR_ID or --toy")
        if prompts_file is None and not toy:
            raise GenerationError("give --prompts FILE (or --toy for the shapes world's captions)")
        if options["per_prompt"] == 0 and options["pool_k"] == 0:
            raise GenerationError("nothing to generate: --per-prompt and --step-pools are both 0")
        prompts = read_prompts(prompts_file) if prompts_file is not None else list(train_captions())
        prompts = prompts[:limit] if limit else prompts
        if options["seed"] is None:
            options["seed"] = secrets.randbits(32)
        cfg = GenerationConfig(**{**options, "pool_steps": _parse_steps(options["pool_steps"])})
        source = str(TOY_MODEL_DIR) if toy else model
        name = model_name or ("toy" if toy else model)
        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        pipe = load_pipeline(source, device=device, dtype=None if dtype == "auto" else dtypes[dtype])
        store = open_store(ctx)
        console.print(f"{name}: {len(prompts)} prompts on {pipe.device}, seed {cfg.seed}")
        skipped = 0
        if cfg.per_prompt:
            report = generate_pairs(store, pipe, name, prompts, cfg)
            skipped += report.skipped_pairs
            console.print(f"final pairs: {report.images} images, {report.pairs} pairs")
        if cfg.pool_k:
            report = generate_step_pools(store, pipe, name, prompts, cfg)
            skipped += report.skipped_pairs
            console.print(
                f"step pools: {report.pools} pools at steps {list(cfg.steps_with_pools())}, "
                f"{report.images} images, {report.pairs} step pairs"
            )
        if skipped:
            console.print(f"left out {skipped} pairs of two identical images")


with_config_options(generate, GenerationConfig, OVERRIDES)
