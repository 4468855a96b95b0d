"""`workbench train ...`: run a training recipe in this process on a dataset snapshot.

Each command's options are the fields of the recipe's config dataclass, with the field's default
and help, so the dataclass stays the one place where an option is defined. For several GPUs,
launch the recipe module with the run's config instead:
``accelerate launch -m training.dpo --config <run folder>/config.json``.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields
from datetime import datetime
from typing import Any, get_args, get_origin, get_type_hints

import typer

from datastore.store import Store
from reward_models.base import ScorerError
from training.config import ConfigError, DPOConfig, RecipeConfig, SPMConfig, SPOConfig
from training.errors import TrainingError
from workbench.cli.common import console, err_console
from workbench.registry import register_run
from workbench.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Train Diffusion-DPO, the step-aware preference model and SPO.")


def config_options(config_class: type, overrides: dict[str, tuple[Any, str]]) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of a config dataclass.

    Args:
        config_class: The recipe's config dataclass; each field has ``metadata["help"]``.
        overrides: Field name -> (CLI default, help) where the CLI knows a better default than
            the library, e.g. a folder inside the workbench home.

    Returns:
        Parameters for a command's ``__signature__``.
    """
    hints = get_type_hints(config_class)
    parameters = []
    for f in fields(config_class):
        annotation = hints[f.name]
        default: Any = f.default if f.default is not MISSING else ...
        if f.default_factory is not MISSING:
            default = f.default_factory()
        help_text = f.metadata["help"]
        if f.name in overrides:
            default, help_text = overrides[f.name]
            annotation = annotation | None if default is None else annotation
        if get_origin(annotation) is tuple:  # a repeatable option: --lora-targets to_q --lora-targets to_k
            annotation, default = list[get_args(annotation)[0]], list(default)
        flag = f.name.replace("_", "-")
        declarations = [f"--{flag}/--no-{flag}"] if annotation is bool else [f"--{flag}"]
        parameters.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=typer.Option(default, *declarations, help=help_text),
            )
        )
    return parameters


def dpo(ctx: typer.Context, **options: Any) -> None:
    """Train with Diffusion-DPO (or its SFT baseline) on a dataset snapshot, resuming if the run folder has a checkpoint."""
    cfg = _config(DPOConfig, "dpo", ctx.obj, options)
    from training.dpo import main

    _run(main, "dpo", cfg, ctx.obj)


dpo.__signature__ = inspect.Signature(
    [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *config_options(
            DPOConfig,
            {
                "output_dir": (
                    None,
                    "Run folder (default: <home>/runs/dpo-<date>-<time>); reuse one to resume.",
                )
            },
        ),
    ]
)
app.command()(dpo)


def _config(
    config_class: type[RecipeConfig], recipe: str, settings: Settings, options: dict[str, Any]
) -> Any:
    """The recipe's config from the command's options; the run folder defaults to <home>/runs/<recipe>-<date>-<time>."""
    if options["output_dir"] is None:
        options["output_dir"] = settings.home / "runs" / datetime.now().strftime(f"{recipe}-%Y%m%d-%H%M%S")
    try:
        return config_class(**options)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from e


def _run(main: Any, recipe: str, cfg: RecipeConfig, settings: Settings) -> None:
    """Runs a recipe's ``main(cfg)`` and registers the weights in the store; expected errors become one line and exit code 1."""
    console.print(f"run folder: {cfg.output_dir}")
    try:
        final = main(cfg)
    except (TrainingError, ScorerError) as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e
    model_id = register_run(Store.open(settings.home), recipe, cfg, final)
    console.print(f"weights: {final}")
    console.print(f"registered as model {model_id}")


def spm(ctx: typer.Context, **options: Any) -> None:
    """Train the step-aware preference model (SPO's SPM) on a dataset snapshot, resuming if the run folder has a checkpoint."""
    cfg = _config(SPMConfig, "spm", ctx.obj, options)
    from training.spm import main

    _run(main, "spm", cfg, ctx.obj)


def spo(ctx: typer.Context, **options: Any) -> None:
    """Fine-tune a LoRA with SPO: online step-level preferences judged by a scorer, resuming if the run folder has a checkpoint."""
    cfg = _config(SPOConfig, "spo", ctx.obj, options)
    from training.spo import main

    _run(main, "spo", cfg, ctx.obj)


for _command, _config_class in ((spm, SPMConfig), (spo, SPOConfig)):
    _command.__signature__ = inspect.Signature(
        [
            inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
            *config_options(
                _config_class,
                {
                    "output_dir": (
                        None,
                        f"Run folder (default: <home>/runs/{_command.__name__}-<date>-<time>); reuse one to resume.",
                    )
                },
            ),
        ]
    )
    app.command()(_command)
