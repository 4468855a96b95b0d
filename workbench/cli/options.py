"""CLI options built from config dataclass fields, so the dataclass stays the one place an option is defined.

`with_config_options` gives a typer command one option per field of a config dataclass, with the
field's default and help: ``--learning-rate``, a repeatable option for a tuple
(``--lora-targets to_q --lora-targets to_k``) and ``--x/--no-x`` for a bool.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, get_args, get_origin, get_type_hints

import typer

from training.options import TypedConfig, default_of

KEEP: Any = object()
"""An `Override` default meaning: the field's own default."""


@dataclass(frozen=True)
class Override:
    """Where a command's option differs from its config field.

    Attributes:
        default: The CLI default, e.g. None where the command fills the value in (a folder in the
            workbench home); `KEEP` keeps the field's.
        help: The CLI help; None keeps the field's.
        flag: The option's name without the dashes; None derives it from the field's name.
        annotation: The type the CLI parses, e.g. ``str`` for steps given as "4,8,12"; None keeps
            the field's.
    """

    default: Any = KEEP
    help: str | None = None
    flag: str | None = None
    annotation: Any = None


def config_options(
    config_class: type, overrides: dict[str, Override] | None = None, *, exclude: tuple[str, ...] = ()
) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of a config dataclass, in field order.

    Args:
        config_class: A config dataclass; each field has ``metadata["help"]``.
        overrides: Field name -> how its option differs from the field.
        exclude: Fields that get no option; a nested config field must be among them (its
            options come from `config_options` of its own class).

    Returns:
        Parameters for a command's ``__signature__``; a field without a default is a required option.
    """
    overrides = overrides or {}
    hints = get_type_hints(config_class)
    parameters = []
    for f in fields(config_class):
        if f.name in exclude:
            continue
        change = overrides.get(f.name, Override())
        annotation = change.annotation or hints[f.name]
        if isinstance(annotation, type) and issubclass(annotation, TypedConfig):
            raise TypeError(
                f"{config_class.__name__}.{f.name} is a nested config: exclude it and add the options of "
                f"{annotation.__name__} (config_options of that class)"
            )
        default = default_of(f)
        default = ... if default is MISSING else default
        if change.default is not KEEP:
            default = change.default
            if default is None and type(None) not in get_args(annotation):
                annotation = annotation | None
        if get_origin(annotation) is tuple:
            annotation, default = list[get_args(annotation)[0]], list(default)
        flag = change.flag or f.name.replace("_", "-")
        declarations = [f"--{flag}/--no-{flag}"] if annotation is bool else [f"--{flag}"]
        help_text = f.metadata["help"] if change.help is None else change.help
        parameters.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=typer.Option(default, *declarations, help=help_text),
            )
        )
    return parameters


def with_config_options(
    command: Callable[..., Any],
    config_class: type,
    overrides: dict[str, Override] | None = None,
    *,
    exclude: tuple[str, ...] = (),
) -> Callable[..., Any]:
    """Gives ``command`` the options of `config_options` in place of its ``**options`` parameter.

    The command's own parameters (a context, options that are not config fields) come first and
    stay as they are; the config options arrive in ``**options``, keyed by field name.

    Returns:
        ``command`` itself, for ``app.command()(with_config_options(...))``.
    """
    own = [
        p
        for p in inspect.signature(command).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    command.__signature__ = inspect.Signature(
        [*own, *config_options(config_class, overrides, exclude=exclude)]
    )
    return command
