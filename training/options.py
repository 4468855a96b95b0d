"""Typed config dataclasses: each option declared once with its type, default, help and bounds.

`option` makes a dataclass field whose ``metadata`` holds its help text and numeric bounds;
`TypedConfig` checks every field against its type hint and bounds when the config is made,
writes JSON-ready dicts and reads them back. The CLI options and the Streamlit forms are built
from the same fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from training.errors import TrainingError

BOUNDS = ("ge", "gt", "le", "lt")


class ConfigError(TrainingError, ValueError):
    """A config value is out of range or of the wrong kind."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    **field_kwargs: Any,
) -> Any:
    """A dataclass field with its help text and numeric bounds in ``metadata``.

    Args:
        default: The default; a list, tuple or dict default is copied for each instance.
        help: The option's documentation (CLI help, form tooltip).
        ge, gt, le, lt: Bounds the value must satisfy (>=, >, <=, <); None values are not checked.
        field_kwargs: Passed on to `dataclasses.field`.
    """
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("give at most one lower bound (ge, gt) and one upper bound (le, lt)")
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, list | tuple | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata=metadata, **field_kwargs
        )
    return dataclasses.field(default=default, metadata=metadata, **field_kwargs)


class TypedConfig:
    """A base for config dataclasses: checked on creation, JSON out and in.

    A subclass that redeclares an inherited field (to change its default or help) keeps the
    help and bounds of the inherited declaration that its `option` does not restate.

    Attributes:
        error: The exception class that `check` and `from_dict` raise; a config of another layer
            may name its own.
    """

    error: ClassVar[type[Exception]] = ConfigError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Runs before @dataclass reads the class body, so the merged metadata is what it records.
        for name, value in vars(cls).items():
            if not isinstance(value, dataclasses.Field):
                continue
            inherited = next(
                (
                    b.__dataclass_fields__[name]
                    for b in cls.__mro__[1:]
                    if name in getattr(b, "__dataclass_fields__", {})
                ),
                None,
            )
            if inherited is not None:
                own = {k: v for k, v in value.metadata.items() if v is not None and v != ""}
                value.metadata = types.MappingProxyType({**inherited.metadata, **own})

    def __post_init__(self) -> None:
        self.check()
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), unwrap_optional(hints[f.name])
            if hint is Path and isinstance(value, str):
                object.__setattr__(self, f.name, Path(value))
            elif typing.get_origin(hint) is tuple and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    def problems(self) -> list[str]:
        """What is wrong with the values, one line each, in field order: a value of the wrong type
        (``"abc"`` for a float, 1.5 for an int), a number that is not finite, a ``Literal[...]``
        value not among its choices, or a number outside the field's bounds."""
        hints = typing.get_type_hints(type(self))
        problems = []
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            problem = _type_problem(f.name, value, hint) or _bound_problem(f.name, value, f.metadata)
            if problem:
                problems.append(problem)
        return problems

    def check(self) -> None:
        """Raises `error` listing every one of `problems`, each naming its field."""
        problems = self.problems()
        if problems:
            raise self.error("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values: paths as strings, tuples as lists, nested configs as dicts."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> typing.Self:
        """Builds the config from `to_dict`'s output (or a hand-written dict); nested configs are rebuilt.

        Args:
            data: Option name -> value; unknown names are an error.
            source: Where the data came from (a file), named in error messages.
        """
        if not isinstance(data, dict):
            raise cls.error(
                f"{source or 'the data'} must hold a JSON object of {cls.__name__} options, got a {type(data).__name__}"
            )
        unknown = sorted(data.keys() - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            where = f" in {source}" if source else ""
            raise cls.error(f"unknown {cls.__name__} options{where}: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        data = dict(data)
        for name, value in data.items():
            hint = unwrap_optional(hints[name])
            if isinstance(hint, type) and issubclass(hint, TypedConfig) and isinstance(value, dict):
                data[name] = hint.from_dict(value, f"{name} of {source}" if source else name)
        try:
            return cls(**data)
        except TypeError as e:  # a required option is missing
            raise cls.error(f"{source}: {e}" if source else str(e)) from e

    @classmethod
    def from_json(cls, path: str | Path) -> typing.Self:
        """Reads a config written from `to_dict` (or by hand); unknown keys are an error."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise cls.error(f"cannot read the {cls.__name__} file {path}: {e}") from e
        return cls.from_dict(data, str(path))


def default_of(f: dataclasses.Field) -> Any:
    """A field's default (a fresh one from its default factory), or ``MISSING`` if it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def unwrap_optional(hint: Any) -> Any:
    """``X | None`` -> ``X``; any other type hint as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _jsonable(value: Any) -> Any:
    if isinstance(value, TypedConfig):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _type_problem(name: str, value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the field's type hint (bools are not numbers), or None."""
    if value is None and type(None) in typing.get_args(hint):
        return None
    hint = unwrap_optional(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return None if value in args else f"{name} must be one of {', '.join(map(str, args))}, got {value!r}"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number"
    elif hint is int:
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif hint is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif hint is str:
        ok, expected = isinstance(value, str), "text"
    elif hint is Path:
        ok, expected = isinstance(value, str | Path), "a path"
    elif origin is tuple:
        element = args[0]
        ok = isinstance(value, tuple | list) and all(
            isinstance(v, element) and not isinstance(v, bool) for v in value
        )
        expected = f"a list of {element.__name__}"
    elif isinstance(hint, type) and issubclass(hint, TypedConfig):
        ok, expected = isinstance(value, hint), f"a {hint.__name__}"
    else:
        return None
    return None if ok else f"{name} must be {expected}, got {value!r}"


def _bound_problem(name: str, value: Any, metadata: typing.Mapping[str, Any]) -> str | None:
    """Why the number ``value`` is outside the field's bounds, or None (also for None and non-numbers)."""
    ge, gt, le, lt = (metadata.get(key) for key in BOUNDS)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    ):
        return None
    lower = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    upper = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if lower and upper:
        return f"{name} must be in {lower}, {upper}, got {value}"
    if lower:
        return f"{name} must be {'>=' if ge is not None else '>'} {lower[1:]}, got {value}"
    return f"{name} must be {'<=' if le is not None else '<'} {upper[:-1]}, got {value}"
