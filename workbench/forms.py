"""Config dataclasses as forms, free of Streamlit so that tests reach it.

`form_fields` describes one widget per field of a `TypedConfig` (kind, default, help), as the
CLI makes one option per field; the fields of a nested config become widgets named
``outer.inner``. `config_from_form` turns the widgets' values back into the config. The
Streamlit side is `workbench.ui.forms`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Literal

from training.options import ConfigError, TypedConfig, default_of, unwrap_optional

FieldKind = Literal["bool", "int", "float", "choice", "text", "list", "json"]


@dataclass(frozen=True)
class FormField:
    """One config field as a widget.

    Attributes:
        name: The field's name (also the JSON key and CLI option); ``outer.inner`` for a field of
            a nested config.
        kind: bool, int, float, choice (a Literal), text (str and paths), list (a tuple, typed as
            comma-separated items) or json (a dict, typed as a JSON object).
        default: The widget's initial value: the field's default, as text for text, list and json.
        help: The field's help text.
        choices: The Literal's values, for choice.
        required: The field has no default: empty text is an error.
        optional: The field may be None: empty text is None (a number widget may be left empty).
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


def form_fields(config_class: type[TypedConfig], exclude: tuple[str, ...] = ()) -> list[FormField]:
    """One `FormField` per field of a config dataclass, in declaration order.

    Args:
        config_class: The config.
        exclude: Field names (``outer.inner`` for a nested config's) that get no widget.
    """
    return _form_fields(config_class, None, "", exclude)


def _form_fields(
    config_class: type[TypedConfig], defaults: TypedConfig | None, prefix: str, exclude: tuple[str, ...]
) -> list[FormField]:
    """The fields of ``config_class``, named ``prefix + name``; defaults from ``defaults`` when given
    (a nested config's defaults are its outer field's default, not its class's)."""
    hints = typing.get_type_hints(config_class)
    out = []
    for f in dataclasses.fields(config_class):
        name = prefix + f.name
        if name in exclude:
            continue
        optional = type(None) in typing.get_args(hints[f.name])
        hint, help_text = unwrap_optional(hints[f.name]), f.metadata["help"]
        required = default_of(f) is MISSING
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = None if required else default_of(f)
        if isinstance(hint, type) and issubclass(hint, TypedConfig):
            out += _form_fields(hint, default, name + ".", exclude)
        elif typing.get_origin(hint) is Literal:
            out.append(FormField(name, "choice", default, help_text, choices=typing.get_args(hint)))
        elif hint is bool:
            out.append(FormField(name, "bool", default, help_text))
        elif hint in (int, float):
            out.append(FormField(name, hint.__name__, default, help_text, optional=optional))
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            text = "" if default is None else ", ".join(map(str, default))
            out.append(FormField(name, "list", text, help_text, optional=optional, item_type=item))
        elif hint is dict or typing.get_origin(hint) is dict:
            out.append(FormField(name, "json", json.dumps(default or {}), help_text))
        else:  # str, Path and their optional forms
            text = "" if default is None else str(default)
            out.append(FormField(name, "text", text, help_text, required=required, optional=optional))
    return out


def config_from_form(config_class: type[TypedConfig], values: dict[str, Any]) -> TypedConfig:
    """Builds the config from widget values keyed by `FormField.name`.

    Empty text is None for fields that may be None; lists are comma-separated; a field without a
    value keeps its default (for a nested config's field, its outer field's default).

    Raises:
        ConfigError: A required field is empty, a list item is not a number, a JSON field is not
            a JSON object, or the config's own validation fails (its own error class).
    """
    options: dict[str, Any] = {}
    for spec in form_fields(config_class):
        if spec.name not in values:
            continue
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
            if not value and spec.optional:
                value = None
        elif spec.kind == "json":
            try:
                value = json.loads(value or "{}")
            except ValueError as e:
                raise ConfigError(f"{spec.name} must be a JSON object: {e}") from e
        *outer, name = spec.name.split(".")
        _nested(config_class, options, outer)[name] = value
    return config_class.from_dict(options)


def _nested(config_class: type[TypedConfig], options: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """The dict under ``options`` for the nested config at ``path``, started from its outer
    field's default so that the fields without a widget keep it."""
    for name in path:
        if name not in options:
            default = default_of(next(f for f in dataclasses.fields(config_class) if f.name == name))
            options[name] = {} if default is MISSING or default is None else default.to_dict()
        options, config_class = options[name], unwrap_optional(typing.get_type_hints(config_class)[name])
    return options
