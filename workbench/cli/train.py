"""`workbench train ...`: run a training recipe in this process on a dataset snapshot.

Each command's options are the fields of the recipe's config dataclass, with the field's default
and help (`workbench.cli.options`), so the dataclass stays the one place where an option is
defined. For several GPUs, launch the recipe module with the run's config instead:
``accelerate launch -m training.dpo --config <run folder>/config.json``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer

from datastore.store import Store
from reward_models.base import ScorerError
from training.config import RecipeConfig
from training.errors import TrainingError
from training.options import ConfigError
from training.recipes import Recipe, get_recipe
from workbench.cli.common import console, err_console
from workbench.cli.options import Override, with_config_options
from workbench.registry import register_run
from workbench.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Train Diffusion-DPO, the step-aware preference model and SPO.")


def dpo(ctx: typer.Context, **options: Any) -> None:
    """Train with Diffusion-DPO (or its SFT baseline) on a dataset snapshot, resuming if the run folder has a checkpoint."""
    _train(get_recipe("dpo"), ctx.obj, options)


def spm(ctx: typer.Context, **options: Any) -> None:
    """Train the step-aware preference model (SPO's SPM) on a dataset snapshot, resuming if the run folder has a checkpoint."""
    _train(get_recipe("spm"), ctx.obj, options)


def spo(ctx: typer.Context, **options: Any) -> None:
    """Fine-tune a LoRA with SPO: online step-level preferences judged by a scorer, resuming if the run folder has a checkpoint."""
    _train(get_recipe("spo"), ctx.obj, options)


def _train(recipe: Recipe, settings: Settings, options: dict[str, Any]) -> None:
    """Builds the recipe's config from the command's options, runs it in this process and registers
    the weights in the store; expected errors become one line and exit code 1."""
    if options["output_dir"] is None:
        options["output_dir"] = (
            settings.home / "runs" / datetime.now().strftime(f"{recipe.name}-%Y%m%d-%H%M%S")
        )
    try:
        cfg: RecipeConfig = recipe.config_class(**options)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from e
    console.print(f"run folder: {cfg.output_dir}")
    try:
        final = recipe.run(cfg)
    except (TrainingError, ScorerError) as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e
    model_id = register_run(Store.open(settings.home), recipe.name, cfg, final)
    console.print(f"weights: {final}")
    console.print(f"registered as model {model_id}")


for _command in (dpo, spm, spo):
    _name = _command.__name__
    _run_folder = Override(
        None, f"Run folder (default: <home>/runs/{_name}-<date>-<time>); reuse one to resume."
    )
    app.command()(with_config_options(_command, get_recipe(_name).config_class, {"output_dir": _run_folder}))
