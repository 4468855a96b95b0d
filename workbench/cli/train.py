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

from training.config import ConfigError, DPOConfig
from training.errors import TrainingError
from workbench.cli.common import console, err_console
from workbench.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Train Diffusion-DPO from a dataset snapshot.")


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
    settings: Settings = ctx.obj
    if options["output_dir"] is None:
        options["output_dir"] = settings.home / "runs" / datetime.now().strftime("dpo-%Y%m%d-%H%M%S")
    try:
        cfg = DPOConfig(**options)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from e
    from training.dpo import main

    console.print(f"run folder: {cfg.output_dir}")
    try:
        final = main(cfg)
    except TrainingError as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e
    console.print(f"weights: {final}")


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
