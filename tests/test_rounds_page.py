"""The Rounds page headless through AppTest, on a home with one real (tiny) round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from datastore.records import NewJudgment, ensure_annotator, insert_judgments
from datastore.store import Store
from workbench.jobs import list_jobs, stop_job, wait_for_job
from workbench.rounds.config import RoundConfig
from workbench.rounds.driver import launch_round, run_round
from workbench.rounds.errors import RoundWaiting
from workbench.rounds.reading import get_round, human_needs

PAGE = str(Path(__file__).resolve().parents[1] / "workbench" / "ui" / "rounds.py")
TINY = RoundConfig.from_dict(
    {
        "num_prompts": 3,
        "num_inference_steps": 4,
        "eval_prompts": 2,
        "eval_seeds": (0,),
        "eval_steps": 4,
        "training": {"max_steps": 2, "batch_size": 2},
    }
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
        if widget.label in ("Prompts per round", "Training steps per round"):
            widget.set_value(1)
    next(b for b in page.button if b.label == "Launch in the background").click().run()
    assert not page.exception
    store = Store.open(home)
    (job,) = list_jobs(store, kind="round")
    assert job.command[3:7] == ["round", "run", "--config", str(job.run_dir / "round_config.json")]
    assert job.command[-2:] == ["--parent", "2"]  # the newest model by default
    launched = json.loads((job.run_dir / "round_config.json").read_text())
    assert launched["num_prompts"] == 1 and launched["training"]["max_steps"] == 1
    assert (launched["recipe"], launched["scorer"]) == ("dpo", "shapes-oracle")  # the defaults
    stop_job(store, job.id, grace_s=5)


def test_a_launched_round_finishes_in_the_background(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    job = launch_round(store, TINY)
    done = wait_for_job(store, job.id, timeout_s=300)
    assert done.status == "finished", done.error
    assert get_round(store, 1).status == "finished" and get_round(store, 1).model_id == 2


def _open(home: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    return at


def test_a_round_judged_by_people_is_launched_from_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    page = _open(home, monkeypatch)
    launch = next(b for b in page.button if b.label == "Launch in the background")
    page.selectbox(key="launch_feedback").set_value("both")
    page.number_input(key="launch_per_pair").set_value(2)
    next(w for w in page.number_input if w.label.startswith("Rounds")).set_value(2)
    launch.click().run()
    assert "one at a time" in page.error[0].value  # people are not chained round after round
    store = Store.open(home)
    assert list_jobs(store, kind="round") == []
    next(w for w in page.number_input if w.label.startswith("Rounds")).set_value(1)
    next(b for b in page.button if b.label == "Launch in the background").click().run()
    assert not page.exception and not page.error
    (job,) = list_jobs(store, kind="round")
    stop_job(store, job.id, grace_s=5)
    launched = json.loads((job.run_dir / "round_config.json").read_text())
    assert (launched["feedback"], launched["human_judgments_per_pair"]) == ("both", 2)
    assert "--auto" not in job.command


def test_a_waiting_round_shows_what_it_needs_and_continues_once_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread
) -> None:
    store = Store.open(tmp_path / "home")
    config = RoundConfig.from_dict({**TINY.to_dict(), "feedback": "both", "human_judgments_per_pair": 2})
    with pytest.raises(RoundWaiting) as waiting:
        run_round(store, config)
    with store.read() as con:
        pairs = [r[0] for r in con.execute("SELECT id FROM pairs WHERE round_id = 1 ORDER BY id").fetchall()]
    n = len(pairs)
    assert waiting.value.missing == 2 * n
    page = _open(store.home, monkeypatch)
    assert f"needs **{2 * n}** more human judgments on **{n}** pairs" in page.warning[0].value
    assert "names no annotators" in page.warning[0].value
    assert page.button(key="continue_1").disabled
    # The oracle judged every pair once before the round waited; no person has judged yet.
    _, given, short = (d.value for d in page.dataframe)
    assert dict(zip(given["annotator"], given["judgments"], strict=True)) == {"AI scorer": n}
    assert f"{n} of the round's {n} pairs" in page.caption[0].value
    assert short.to_dict("list") == {"pair": pairs, "kind": ["final"] * n, "still needed": [2] * n, "judged by": [""] * n}
    # Ann judges every pair, Bob all but the first: one judgment is still missing, on the first pair.
    with store.write() as con:
        ann, bob = ensure_annotator(con, "ann"), ensure_annotator(con, "bob")
        insert_judgments(con, [NewJudgment(p, ann, "app", "a") for p in pairs])
        insert_judgments(con, [NewJudgment(p, bob, "app", "b") for p in pairs[1:]])
    page.run()
    assert "needs **1** more human judgments on **1** pairs" in page.warning[0].value
    _, given, short = (d.value for d in page.dataframe)
    assert dict(zip(given["annotator"], given["judgments"], strict=True)) == {"ann": n, "bob": n - 1, "AI scorer": n}
    assert short.to_dict("list") == {"pair": [pairs[0]], "kind": ["final"], "still needed": [1], "judged by": ["ann"]}
    with store.write() as con:
        insert_judgments(con, [NewJudgment(pairs[0], bob, "app", "b")])
    page.run()
    assert "has every human judgment it needs" in page.success[0].value
    assert len(page.dataframe) == 2  # the timeline and the judgments given: no pair is short
    page.button(key="continue_1").click().run()
    assert not page.exception and not page.error
    (job,) = list_jobs(store, kind="round")
    stop_job(store, job.id, grace_s=5)
    assert job.command[3:6] == ["round", "resume", "1"] and job.round_id == 1
    needs = human_needs(store, 1)
    assert (needs.missing, needs.pairs, needs.per_pair, needs.ai, needs.ai_pairs) == (0, 0, 2, n, n)


def test_the_recipe_and_the_ai_judge_are_chosen_at_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    page = _open(home, monkeypatch)
    page.text_input(key="launch_scorer").input("  ")
    next(b for b in page.button if b.label == "Launch in the background").click().run()
    assert "Name the AI judge" in page.error[0].value
    store = Store.open(home)
    assert list_jobs(store, kind="round") == []
    page.text_input(key="launch_scorer").input("pickscore:/models/pickscore")
    page.selectbox(key="launch_recipe").set_value("spm-spo")
    next(w for w in page.number_input if w.label == "Training steps per round").set_value(7)
    next(b for b in page.button if b.label == "Launch in the background").click().run()
    assert not page.exception and not page.error
    (job,) = list_jobs(store, kind="round")
    stop_job(store, job.id, grace_s=5)
    launched = json.loads((job.run_dir / "round_config.json").read_text())
    assert (launched["recipe"], launched["scorer"]) == ("spm-spo", "pickscore:/models/pickscore")
    # Both stages get the step count, not the demo's DPO settings.
    assert launched["training"] == {"max_steps": 7} and launched["spo_training"] == {"max_steps": 7}
