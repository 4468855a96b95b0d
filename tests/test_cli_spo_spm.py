"""`workbench train spm` and `workbench train spo`: options from the config dataclasses, real one-step runs."""

from __future__ import annotations

import json
from dataclasses import fields

import polars as pl
import pytest
import typer
from tiny_clip import build_tiny_clip
from tiny_models import build_tiny_sd15, write_snapshot
from typer.testing import CliRunner

from datastore.sql import first_row
from datastore.store import Store
from training.config import SPMConfig, SPOConfig
from workbench.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return build_tiny_sd15(root / "sd"), build_tiny_clip(root / "clip")


@pytest.mark.parametrize(("command", "config_class"), [("spm", SPMConfig), ("spo", SPOConfig)])
def test_every_config_field_is_an_option_with_its_help(command, config_class):
    assert runner.invoke(app, ["train", command, "--help"]).exit_code == 0
    options = {p.name: p for p in typer.main.get_command(app).commands["train"].commands[command].params}
    for f in fields(config_class):
        if f.name != "output_dir":
            assert options[f.name].help == f.metadata["help"]
    assert options["output_dir"].help.startswith(f"Run folder (default: <home>/runs/{command}-")
    assert options["pretrained_model"].required


def test_spo_one_step_with_a_scorer_spec(models, tmp_path):
    sd, clip = models
    args = [
        "--home",
        str(tmp_path / "home"),
        "train",
        "spo",
        "--pretrained-model",
        str(sd),
        "--scorer",
        f"clip:{clip}",
    ]
    args += [
        "--prompts",
        "a red circle",
        "--prompts",
        "a blue square",
        "--resolution",
        "16",
        "--max-steps",
        "1",
    ]
    args += [
        "--num-inference-steps",
        "8",
        "--warmup-steps",
        "2",
        "--prompts-per-step",
        "1",
        "--threshold",
        "0",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "home" / "runs").iterdir()
    assert run.name.startswith("spo-")
    assert json.loads((run / "config.json").read_text())["prompts"] == ["a red circle", "a blue square"]
    assert (run / "final" / "pytorch_lora_weights.safetensors").is_file()
    with Store.open(tmp_path / "home").read() as con:
        kind, parent = first_row(
            con, "SELECT m.kind, p.path FROM models m JOIN models p ON m.parent_id = p.id"
        )
    assert (kind, parent) == ("lora", str(sd))


def test_spm_one_step(models, tmp_path):
    sd, clip = models
    snapshot = write_snapshot(tmp_path / "snapshot", n_pairs=4)
    args = [
        "--home",
        str(tmp_path / "home"),
        "train",
        "spm",
        "--pretrained-model",
        str(sd),
        "--reward-model",
        str(clip),
    ]
    args += [
        "--dataset",
        str(snapshot),
        "--resolution",
        "16",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--eval-fraction",
        "0",
    ]
    args += ["--timestep-buckets", "0", "--timestep-buckets", "500", "--timestep-buckets", "1000"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "home" / "runs").iterdir()
    assert (run / "final" / "step_aware.json").is_file()
    with Store.open(tmp_path / "home").read() as con:
        kind, parent = first_row(
            con, "SELECT m.kind, p.path FROM models m JOIN models p ON m.parent_id = p.id"
        )
    assert (kind, parent) == ("scorer", str(clip))
    (record,) = pl.read_ndjson(run / "metrics.jsonl").to_dicts()
    assert set(record) >= {"loss", "train_accuracy"}


def test_bad_values_are_one_line_errors(models, tmp_path):
    sd, _ = models
    base = [
        "--home",
        str(tmp_path),
        "train",
        "spo",
        "--pretrained-model",
        str(sd),
        "--prompts",
        "a red circle",
    ]
    result = runner.invoke(app, [*base, "--scorer", "clip", "--resolution", "16"])
    assert result.exit_code == 1
    assert "error: scorer spec 'clip' is not one of" in result.output
    assert not (tmp_path / "runs").exists()
    result = runner.invoke(app, [*base, "--scorer", "clip:x", "--num-candidates", "1"])
    assert result.exit_code == 2
    assert "num_candidates must be >= 2" in result.output
