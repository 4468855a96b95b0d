"""What the Train page needs from the recipe configs, free of Streamlit so that tests reach it.

`form_fields` describes one widget per config dataclass field (kind, default, help), as the CLI
makes one option per field; `config_from_form` turns the widgets' values back into the config;
`training_curves` picks the charted series out of a run's ``metrics.jsonl`` rows.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal

import polars as pl

from training.config import ConfigError, RecipeConfig

FieldKind = Literal["bool", "int", "float", "choice", "text", "list"]


@dataclass(frozen=True)
class FormField:
    """One config field as a widget.

    Attributes:
        name: The field's name (also the JSON key and CLI option).
        kind: bool, int, float, choice (a Literal), text (str and paths) or list (a tuple,
            typed as comma-separated items).
        default: The widget's initial value: the field's default, as text for text and list.
        help: The field's help text.
        choices: The Literal's values, for choice.
        required: The field has no default: empty text is an error.
        optional: The field may be None: empty text is None.
        item_type: The tuple's item type, for list.
    """

    name: str
    kind: FieldKind
    default: Any
    help: str
    choices: tuple = ()
    required: bool = False
    optional: bool = False
    item_type: type = str


def form_fields(config_class: type[RecipeConfig]) -> list[FormField]:
    """One `FormField` per field of a recipe config dataclass, in declaration order."""
    hints = typing.get_type_hints(config_class)
    out = []
    for f in fields(config_class):
        hint, help_text = hints[f.name], f.metadata["help"]
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if required else f.default if f.default is not MISSING else f.default_factory()
        if typing.get_origin(hint) is Literal:
            out.append(FormField(f.name, "choice", default, help_text, choices=typing.get_args(hint)))
        elif hint is bool:
            out.append(FormField(f.name, "bool", default, help_text))
        elif hint in (int, float):
            out.append(FormField(f.name, hint.__name__, default, help_text))
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            out.append(FormField(f.name, "list", ", ".join(map(str, default)), help_text, item_type=item))
        else:  # str, Path and their optional forms
            text = "" if default is None else str(default)
            optional = type(None) in typing.get_args(hint)
            out.append(FormField(f.name, "text", text, help_text, required=required, optional=optional))
    return out


def config_from_form(config_class: type[RecipeConfig], values: dict[str, Any]) -> RecipeConfig:
    """Builds the config from widget values keyed by field name.

    Empty text is None for fields that may be None; lists are comma-separated.

    Raises:
        ConfigError: A required field is empty, a list item is not a number, or the config's
            own validation fails.
    """
    options: dict[str, Any] = {}
    for spec in form_fields(config_class):
        value = values[spec.name]
        if spec.kind == "text":
            value = value.strip()
            if not value and spec.required:
                raise ConfigError(f"{spec.name} is required: {spec.help}")
            if not value and spec.optional:
                value = None
        elif spec.kind == "list":
            items = [item.strip() for item in value.split(",") if item.strip()]
            try:
                value = tuple(spec.item_type(item) for item in items)
            except ValueError as e:
                raise ConfigError(
                    f"{spec.name} must be comma-separated {spec.item_type.__name__} values: {e}"
                ) from e
        options[spec.name] = value
    return config_class(**options)


def training_curves(rows: list[dict[str, float]]) -> dict[str, pl.DataFrame]:
    """Charted series of a run's metrics rows, by chart title, each a frame with a ``step`` column.

    - Loss: ``loss``.
    - Implicit accuracy: ``implicit_accuracy`` (DPO, SPO: share of pairs the model prefers the
      winner of more than the reference does), or ``train_accuracy`` / ``eval_accuracy`` (SPM).
    - Reference divergence: for DPO, how far the trained model's denoising errors have moved
      from the reference's, ``(|model_mse_w - ref_mse_w| + |model_mse_l - ref_mse_l|) / 2``; for
      SPO, ``clip_fraction``, the share of likelihood ratios to the sampling policy outside the
      trust region. The SPM and SFT have no reference, hence no such chart.

    Charts with no data are left out.
    """
    if not rows:
        return {}
    frame = pl.DataFrame(rows, infer_schema_length=None)
    columns = set(frame.columns)
    charts: dict[str, pl.DataFrame] = {}
    if "loss" in columns:
        charts["Loss"] = frame.select("step", "loss")
    accuracy = [c for c in ("implicit_accuracy", "train_accuracy", "eval_accuracy") if c in columns]
    if accuracy:
        charts["Implicit accuracy"] = frame.select("step", *accuracy)
    if {"model_mse_w", "model_mse_l", "ref_mse_w", "ref_mse_l"} <= columns:
        divergence = (
            (pl.col("model_mse_w") - pl.col("ref_mse_w")).abs()
            + (pl.col("model_mse_l") - pl.col("ref_mse_l")).abs()
        ) / 2
        charts["Reference divergence"] = frame.select("step", divergence.alias("reference_divergence"))
    elif "clip_fraction" in columns:
        charts["Reference divergence"] = frame.select("step", "clip_fraction")
    return charts
