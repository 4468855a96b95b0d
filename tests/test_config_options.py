"""The config toolkit (`training.options`) and what is built from it: CLI options and form fields."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import pytest

from training.config import DPOConfig, SPMConfig, SPOConfig
from training.options import ConfigError, TypedConfig, option
from workbench.cli.options import Override, config_options
from workbench.forms import config_from_form, form_fields


@dataclass(kw_only=True)
class Inner(TypedConfig):
    rate: float = option(0.5, "A rate.", ge=0, lt=1)
    name: Literal["a", "b"] = option("a", "A choice.")


def default_inner() -> Inner:
    return Inner(rate=0.25)


@dataclass(kw_only=True)
class Outer(TypedConfig):
    out: Path = option(help="A folder.")
    steps: int = option(10, "Steps.", ge=1)
    tags: tuple[str, ...] = option(("x",), "Tags.")
    size: int | None = option(None, "A size.", ge=8)
    inner: Inner = option(help="Nested options.", default_factory=default_inner)


@dataclass(kw_only=True)
class Narrower(Outer):
    steps: int = option(3)


def test_every_problem_is_named_with_its_bound():
    with pytest.raises(ConfigError, match=r"steps must be >= 1, got 0; size must be >= 8, got 4"):
        Outer(out="o", steps=0, size=4)
    with pytest.raises(ConfigError, match=r"rate must be in \[0, 1\), got 1.0"):
        Inner(rate=1.0)
    with pytest.raises(ConfigError, match="name must be one of a, b, got 'c'"):
        Inner(name="c")
    with pytest.raises(ConfigError, match="inner must be a Inner, got"):
        Outer(out="o", inner={"rate": 0.1})


def test_a_redeclared_field_keeps_its_help_and_bounds():
    (steps,) = [f for f in fields(Narrower) if f.name == "steps"]
    assert steps.default == 3 and steps.metadata["help"] == "Steps." and steps.metadata["ge"] == 1
    with pytest.raises(ConfigError, match="steps must be >= 1, got 0"):
        Narrower(out="o", steps=0)


def test_nested_configs_round_trip_through_dicts(tmp_path):
    cfg = Outer(out="o", tags=["a", "b"], inner=Inner(rate=0.1, name="b"))
    assert cfg.out == Path("o") and cfg.tags == ("a", "b")
    data = cfg.to_dict()
    assert data == {"out": "o", "steps": 10, "tags": ["a", "b"], "size": None, "inner": {"rate": 0.1, "name": "b"}}
    assert Outer.from_dict(data) == cfg
    with pytest.raises(ConfigError, match="unknown Inner options in inner of run.json: speed"):
        Outer.from_dict({**data, "inner": {"speed": 1}}, "run.json")
    with pytest.raises(ConfigError, match="run.json: .*missing 1 required keyword-only argument: 'out'"):
        Outer.from_dict({}, "run.json")


def test_recipes_share_their_common_fields_with_their_own_defaults():
    shared = {"learning_rate", "weight_decay", "max_steps", "seed", "checkpoint_every", "keep_checkpoints"}
    for config_class in (DPOConfig, SPOConfig, SPMConfig):
        assert shared <= {f.name for f in fields(config_class)}
    spo = {f.name: f for f in fields(SPOConfig)}
    assert spo["checkpoint_every"].default == 100 and spo["checkpoint_every"].metadata["ge"] == 1
    assert spo["lora_alpha"].default == 4.0 and spo["lora_alpha"].metadata["gt"] == 0


def test_cli_options_follow_the_fields():
    overrides = {"steps": Override(None, "Default: the home's.", flag="n")}
    params = {p.name: p for p in config_options(Outer, overrides, exclude=("inner",))}
    assert params["out"].default.default is ... and params["out"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["steps"].annotation == int | None and params["steps"].default.param_decls == ("--n",)
    assert params["steps"].default.help == "Default: the home's."
    assert params["tags"].annotation == list[str] and params["tags"].default.default == ["x"]
    with pytest.raises(TypeError, match="Outer.inner is a nested config"):
        config_options(Outer)


def test_form_fields_flatten_nested_configs_with_their_outer_defaults():
    specs = {spec.name: spec for spec in form_fields(Outer, exclude=("inner.name",))}
    assert list(specs) == ["out", "steps", "tags", "size", "inner.rate"]
    assert specs["inner.rate"].default == 0.25 and specs["size"].optional
    cfg = config_from_form(Outer, {"out": "o", "tags": "a, b", "inner.rate": 0.75})
    assert cfg.tags == ("a", "b") and cfg.inner == Inner(rate=0.75) and cfg.steps == 10
