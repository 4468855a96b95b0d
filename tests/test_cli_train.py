"""`workbench train dpo`: options generated from DPOConfig, a real one-step run, clear errors."""

from __future__ import annotations

import json
from dataclasses import fields

import typer
from tiny_models import build_tiny_sd15, write_snapshot
from typer.testing import CliRunner

from datastore.records import model_lineage
from datastore.sql import scalar
from datastore.store import Store
from training.config import DPOConfig
from workbench.cli import app

OUTPUT_DIR_HELP = "Run folder (default: <home>/runs/dpo-<date>-<time>); reuse one to resume."

runner = CliRunner()


def test_every_dpo_config_field_is_an_option_with_its_help():
    assert runner.invoke(app, ["train", "dpo", "--help"]).exit_code == 0
    command = typer.main.get_command(app).commands["train"].commands["dpo"]
    options = {param.name: param for param in command.params}
    for f in fields(DPOConfig):
        assert options[f.name].help == (OUTPUT_DIR_HELP if f.name == "output_dir" else f.metadata["help"])
    assert options["dataset"].required
    assert options["random_flip"].secondary_opts == ["--no-random-flip"]


def test_one_step_run_into_the_home_runs_folder(tmp_path):
    model = build_tiny_sd15(tmp_path / "model")
    snapshot = write_snapshot(tmp_path / "snapshot", n_pairs=2)
    args = ["--home", str(tmp_path / "home"), "train", "dpo", "--pretrained-model", str(model)]
    args += ["--dataset", str(snapshot), "--resolution", "16", "--batch-size", "2", "--max-steps", "1"]
    args += ["--lora-targets", "to_q", "--lora-targets", "to_v", "--no-random-flip"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "home" / "runs").iterdir()
    assert run.name.startswith("dpo-")
    config = json.loads((run / "config.json").read_text())
    assert config["lora_targets"] == ["to_q", "to_v"]
    assert config["random_flip"] is False
    assert (run / "final" / "pytorch_lora_weights.safetensors").exists()
    with Store.open(tmp_path / "home").read() as con:
        lineage = model_lineage(con, scalar(con, "SELECT id FROM models WHERE name = ?", [f"dpo-{run.name}"]))
    assert [(m["kind"], m["path"]) for m in lineage] == [("lora", str(run / "final")), ("base", str(model))]
    assert f"registered as model {lineage[0]['id']}" in result.output


def test_bad_value_and_missing_model_are_one_line_errors(tmp_path):
    snapshot = write_snapshot(tmp_path / "snapshot", n_pairs=2)
    base = ["--home", str(tmp_path), "train", "dpo", "--dataset", str(snapshot)]
    result = runner.invoke(app, [*base, "--pretrained-model", "x", "--beta", "-3"])
    assert result.exit_code == 2
    assert "beta must be > 0, got -3.0" in result.output
    assert runner.invoke(app, [*base, "--pretrained-model", "x", "--mode", "dpo"]).exit_code == 2
    result = runner.invoke(app, [*base, "--pretrained-model", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "error: Cannot load pretrained model" in result.output
