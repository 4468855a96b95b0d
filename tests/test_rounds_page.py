"""The Rounds page headless through AppTest, on a home with one real (tiny) round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from datastore.store import Store
from workbench.jobs import list_jobs, stop_job, wait_for_job
from workbench.rounds import RoundConfig, get_round, launch_round, run_round

PAGE = str(Path(__file__).resolve().parents[1] / "workbench" / "ui" / "rounds.py")
TINY = RoundConfig(
    num_prompts=3,
    num_inference_steps=4,
    eval_prompts=2,
    eval_seeds=(0,),
    eval_steps=4,
    training=("max_steps=2", "batch_size=2"),
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("rounds-page")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run_round(Store.open(home), TINY)
    torch.set_num_threads(threads)
    return home


@pytest.fixture
def page(home: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    return at


def test_timeline_and_metrics_show_the_round(page: AppTest, home: Path) -> None:
    summary = get_round(Store.open(home), 1)
    timeline = page.dataframe[0].value
    assert timeline["round"].to_list() == [1] and timeline["status"].to_list() == ["finished"]
    assert timeline["parent -> model"].to_list() == ["1 -> 2"]
    assert timeline["dataset version"].to_list() == [summary.dataset_version]
    assert timeline["win_vs_base"].to_list() == [summary.results["evaluation"]["vs_base"]["win_rate"]]
    # Win rate across rounds, then the round's training loss and implicit accuracy (2 steps each).
    charts = page.get("vega_lite_chart")
    assert len(charts) == 3
    logged = [json.loads(line) for line in (Path(summary.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 2


def test_the_grid_draws_each_checkpoint_once_and_caches_it(page: AppTest, home: Path) -> None:
    page.number_input(key="grid_prompts").set_value(2).run()
    page.button(key="grid_draw").click().run()
    assert not page.exception
    images = page.get("image")
    assert len(images) == 4  # 2 held-out captions x (base, round 1)
    cached = sorted(p.relative_to(home).parts[2] for p in (home / "rounds" / "grid").rglob("*.png"))
    assert cached == ["1", "1", "2", "2"]
    stamps = {p: p.stat().st_mtime_ns for p in (home / "rounds" / "grid").rglob("*.png")}
    page.run()  # shown again from the files, nothing drawn
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_the_launch_button_starts_a_round_job(page: AppTest, home: Path) -> None:
    for widget in page.number_input:
        if widget.label in ("Prompts per round", "DPO steps per round"):
            widget.set_value(1)
    next(b for b in page.button if b.label == "Launch in the background").click().run()
    assert not page.exception
    store = Store.open(home)
    (job,) = list_jobs(store, kind="round")
    assert job.command[3:7] == ["round", "run", "--config", str(job.run_dir / "round_config.json")]
    assert job.command[-2:] == ["--parent", "2"]  # the newest model by default
    launched = json.loads((job.run_dir / "round_config.json").read_text())
    assert launched["num_prompts"] == 1 and "max_steps=1" in launched["training"]
    stop_job(store, job.id, grace_s=5)


def test_a_launched_round_finishes_in_the_background(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    job = launch_round(store, TINY)
    done = wait_for_job(store, job.id, timeout_s=300)
    assert done.status == "finished", done.error
    assert get_round(store, 1).status == "finished" and get_round(store, 1).model_id == 2
