"""The Annotate and Noisy-steps pages, headless through AppTest, on a real store."""

from __future__ import annotations

from pathlib import Path

import pytest
from labeling_data import add_shapes_pairs
from streamlit.testing.v1 import AppTest

from datastore.store import Store

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


def _open(page: str, name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page(f"workbench/ui/{page}").run()
    at.text_input(key="annotator_typed").input(name).run()
    assert not at.exception
    return at


def _judgments(store: Store) -> list[tuple]:
    with store.read() as con:
        return con.execute(
            "SELECT j.pair_id, j.outcome, j.left_image, j.source, a.name, j.shown_at, j.answered_at "
            "FROM judgments j JOIN annotators a ON a.id = j.annotator_id ORDER BY j.id"
        ).fetchall()


def test_annotate_records_the_clicked_side_with_times(home: Path) -> None:
    store = Store.open(home)
    made = add_shapes_pairs(store, 3)
    at = _open("annotate.py", "ann")
    shown = []
    for side in ("left", "right"):
        item, progress = at.session_state["queue_final"]
        assert f"`{item.pair_id}`" in at.caption[-1].value and at.subheader[0].value == item.prompt
        assert len(at.get("image")) == 2
        shown.append(item)
        at.button(key=f"final_{side}_{item.pair_id}").click().run()
        assert not at.exception
    rows = _judgments(store)
    assert len(rows) == 2
    for (pair_id, outcome, left, source, name, shown_at, answered_at), item, side in zip(
        rows, shown, ("left", "right"), strict=True
    ):
        assert (pair_id, left, source, name) == (item.pair_id, item.left_image, "app", "ann")
        assert outcome == (left if side == "left" else {"a": "b", "b": "a"}[left])
        assert answered_at > shown_at
    # Skip moves on without a judgment; then the queue is empty apart from the skipped pair.
    last, progress = at.session_state["queue_final"]
    assert progress.done == 2 and progress.remaining == 1
    at.button(key=f"final_skip_{last.pair_id}").click().run()
    assert at.session_state["queue_final"][0] is None and len(_judgments(store)) == 2
    assert {p.pair_id for p in made} == {i.pair_id for i in shown} | {last.pair_id}
    at.button(key="final_unskip").click().run()
    assert at.session_state["queue_final"][0].pair_id == last.pair_id


def test_noisy_steps_shows_the_chain_position_and_records_step_judgments(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 2, kind="step")
    add_shapes_pairs(store, 2, seed=5)  # final pairs stay out of this page
    at = _open("noisy_steps.py", "bob")
    item, _ = at.session_state["queue_step"]
    assert item.kind == "step"
    assert f"Step **{item.step_index} of 20**" in at.get("progress")[1].proto.text
    assert f"t = {item.timestep}" in at.get("progress")[1].proto.text
    assert "All 2 candidates" in at.expander[0].label
    at.button(key=f"step_tie_{item.pair_id}").click().run()
    nxt, _ = at.session_state["queue_step"]
    at.button(key=f"step_both_bad_{nxt.pair_id}").click().run()
    assert not at.exception
    rows = _judgments(store)
    assert [(r[0], r[1], r[4]) for r in rows] == [(item.pair_id, "tie", "bob"), (nxt.pair_id, "both_bad", "bob")]
    assert all(r[2] in ("a", "b") and r[6] > r[5] for r in rows)
    assert at.session_state["queue_step"][0] is None
    assert "Nothing left" in at.success[0].value


def test_configured_annotators_are_offered_as_a_list(home: Path) -> None:
    Store.open(home)
    (home / "labeling.toml").write_text('annotators = ["ann", "bob"]\n')
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("workbench/ui/annotate.py").run()
    assert at.selectbox(key="annotator_pick").options == ["ann", "bob"]
    at.selectbox(key="annotator_pick").select("bob").run()
    assert at.session_state["annotator"][1] == "bob"
    assert "Nothing left" in at.success[0].value
