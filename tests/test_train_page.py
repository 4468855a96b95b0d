"""The Train page headless through AppTest on a real store, and the form helpers behind it."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from tiny_models import build_tiny_sd15

from datastore.datasets import create_dataset_version
from datastore.formats import import_pickapic
from datastore.store import Store
from training.config import ConfigError, DPOConfig, SPOConfig
from workbench import jobs
from workbench.forms import config_from_form, form_fields
from workbench.toy import TOY_MODEL_DIR
from workbench.training_curves import training_curves

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_form_round_trips_a_config_and_names_what_is_missing():
    values = {spec.name: spec.default for spec in form_fields(SPOConfig)}
    assert values["lora_targets"] == "to_q, to_k, to_v, to_out.0" and values["prompts_file"] == ""
    values.update(pretrained_model="/m", output_dir="/runs/x", prompts="a red circle, a blue square")
    cfg = config_from_form(SPOConfig, values)
    assert cfg.prompts == ("a red circle", "a blue square") and cfg.prompts_file is None
    assert cfg.to_dict() == {
        **SPOConfig(pretrained_model="/m", output_dir="/runs/x", prompts=cfg.prompts).to_dict()
    }
    with pytest.raises(ConfigError, match="pretrained_model is required"):
        config_from_form(SPOConfig, {**values, "pretrained_model": " "})


def test_curves_chart_loss_accuracy_and_reference_divergence():
    rows = [
        {"step": 1, "loss": 0.7, "implicit_accuracy": 0.5, "model_mse_w": 1.0, "ref_mse_w": 1.5, "model_mse_l": 2.0, "ref_mse_l": 1.0},
        {"step": 2, "loss": 0.6, "implicit_accuracy": 1.0, "model_mse_w": 1.0, "ref_mse_w": 1.0, "model_mse_l": 1.0, "ref_mse_l": 1.25},
    ]  # fmt: skip
    curves = training_curves(rows)
    assert list(curves) == ["Loss", "Implicit accuracy", "Reference divergence"]
    # (|1.0 - 1.5| + |2.0 - 1.0|) / 2 = 0.75 and (0 + 0.25) / 2 = 0.125
    assert curves["Reference divergence"]["reference_divergence"].to_list() == [0.75, 0.125]
    assert list(training_curves([{"step": 1, "loss": 0.3, "train_accuracy": 0.6}])) == [
        "Loss",
        "Implicit accuracy",
    ]


@pytest.fixture
def home(tmp_path: Path, monkeypatch, pickapic_file: Path) -> Path:
    home = tmp_path / "home"
    store = Store.open(home)
    import_pickapic(store, pickapic_file, show_progress=False)
    create_dataset_version(store, "prefs")
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


def test_train_page_has_a_widget_per_field_and_launches_one_job(home: Path, tmp_path: Path):
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("workbench/ui/train.py").run()
    assert not at.exception
    shown = {}
    for kind in ("number_input", "text_input", "selectbox", "checkbox"):
        for w in at.get(kind):
            if w.key and w.key.startswith("dpo_"):
                shown[w.key.removeprefix("dpo_")] = w
    for spec in form_fields(DPOConfig):
        if spec.name == "dataset":
            continue
        assert shown[spec.name].help == spec.help
        expected = {"pretrained_model": str(TOY_MODEL_DIR)}.get(spec.name, spec.default)
        if spec.name != "output_dir":
            assert shown[spec.name].value == expected, spec.name
    assert shown["output_dir"].value.startswith(str(home / "runs" / "dpo-"))
    assert at.selectbox(key="dpo_dataset_version").value.startswith("prefs-")
    assert at.caption[-1].value == "No jobs yet."

    model = build_tiny_sd15(tmp_path / "sd15")
    at.text_input(key="dpo_pretrained_model").input(str(model))
    at.number_input(key="dpo_max_steps").set_value(1)
    at.number_input(key="dpo_resolution").set_value(16)
    at.number_input(key="dpo_batch_size").set_value(2).run()
    at.button(key="train_launch").click().run()
    assert not at.exception
    store = Store.open(home)
    [job] = jobs.list_jobs(store)
    assert job.kind == "dpo" and job.active and job.config["max_steps"] == 1
    assert job.config["dataset"].startswith(str(home / "datasets" / "prefs-"))
    # While it runs, the same config cannot be launched again.
    assert at.button(key="train_launch").disabled and at.selectbox(key="train_job").value == job.id
    assert f"Job {job.id} is training this config" in at.info[0].value
    at.button(key="train_stop").click().run()
    assert jobs.get_job(store, job.id).status == "stopped"
