"""The Annotate and Noisy-steps pages headless through AppTest, on a real store.

AppTest runs no JavaScript: these tests read what the server hands the judging widget and put
the widget's messages in its place (the browser tests drive the real widget).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from labeling_data import add_shapes_pairs
from streamlit.testing.v1 import AppTest

from datastore.store import Store

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SHOWN, ANSWERED = "2026-03-01T10:00:00.000Z", "2026-03-01T10:00:02.250Z"


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


def widget_args(at: AppTest) -> dict:
    """What the server handed the judging widget in the last run."""
    (widget,) = at.get("component_instance")
    return json.loads(widget.proto.json_args)


def answer(pair: dict, side: str, key: str) -> dict:
    """The widget's message for a key press on ``pair``."""
    return {
        "type": "answer", "key": key, "pair": pair["id"], "side": side, "left_image": pair["left_image"],
        "gold": pair["gold"], "shown_at": SHOWN, "answered_at": ANSWERED,
    }  # fmt: skip


def send(at: AppTest, kind: str, seq: int, outbox: list[dict], held: list[int], skipped: tuple[int, ...] = ()) -> dict:
    """Deliver a widget message as the browser would and run; returns the widget's new args."""
    annotator = widget_args(at)["annotator"]
    value = {"seq": seq, "annotator": annotator, "outbox": outbox, "held": held, "skipped": list(skipped)}
    at.session_state[f"queue_{kind}_widget"] = value
    at.run()
    assert not at.exception
    return widget_args(at)


def _judgments(store: Store) -> list[tuple]:
    with store.read() as con:
        return con.execute(
            "SELECT j.pair_id, j.outcome, j.left_image, j.source, a.name, j.shown_at, j.answered_at, j.withdrawn "
            "FROM judgments j JOIN annotators a ON a.id = j.annotator_id ORDER BY j.id"
        ).fetchall()


def test_the_widget_gets_the_next_pairs_and_its_answers_are_stored_once(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 9)
    at = _open("annotate.py", "ann")
    assert at.query_params["annotator"] == "ann"  # a reconnect after a server restart keeps the name
    args = widget_args(at)
    pairs = args["pairs"]
    assert (len(pairs), args["prefetch"], args["progress"]) == (5, 5, {"done": 0, "remaining": 9})
    assert {p["left_image"] for p in pairs} == {"a", "b"}  # sides are mixed
    images = {v["image"] for p in pairs for side in p["sides"] for v in side}
    assert len(images) == 10 and set(args["images"]) == images
    assert all(url.startswith("data:image/png;base64,") for url in args["images"].values())
    with store.read() as con:
        leased = {r[0] for r in con.execute("SELECT pair_id FROM pair_leases").fetchall()}
    assert leased == {p["id"] for p in pairs}
    # Two presses and a skip: both stored with the browser's times, the skipped pair not handed again.
    outbox = [answer(pairs[0], "left", "a1" * 8), answer(pairs[1], "right", "a2" * 8)]
    held = [p["id"] for p in pairs[3:]]
    args = send(at, "final", 1, outbox, held, skipped=(pairs[2]["id"],))
    assert args["acked"] == ["a1" * 8, "a2" * 8] and args["seen_seq"] == 1
    handed = [p["id"] for p in args["pairs"]]
    # Those it holds are handed still (not yet seen by the server), then three new ones.
    assert handed[:2] == held and len(handed) == 5 and not set(handed) & {p["id"] for p in pairs[:3]}
    assert set(args["images"]) == {v["image"] for p in args["pairs"] if p["id"] not in held for s in p["sides"] for v in s}
    rows = _judgments(store)
    flip = {"a": "b", "b": "a"}
    assert [r[:5] for r in rows] == [
        (pairs[0]["id"], pairs[0]["left_image"], pairs[0]["left_image"], "app", "ann"),
        (pairs[1]["id"], flip[pairs[1]["left_image"]], pairs[1]["left_image"], "app", "ann"),
    ]
    assert rows[0][5:7] == (datetime(2026, 3, 1, 10, 0), datetime(2026, 3, 1, 10, 0, 2, 250000))
    # The same outbox again (an acknowledgement lost): nothing new. Then an undo of the second.
    send(at, "final", 2, outbox, held)
    assert len(_judgments(store)) == 2
    args = send(at, "final", 3, [{"type": "undo", "key": "b1" * 8, "target": "a2" * 8}], held)
    assert args["acked"] == ["b1" * 8] and [r[7] for r in _judgments(store)] == [False, True]
    assert args["progress"]["done"] == 1


def test_malformed_messages_are_dropped_with_a_warning_and_store_nothing(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 3)
    at = _open("annotate.py", "ann")
    pair = widget_args(at)["pairs"][0]
    bad_side = answer(pair, "up", "c1" * 8)
    bad_time = {**answer(pair, "left", "c2" * 8), "shown_at": "yesterday"}
    no_pair = {**answer(pair, "left", "c4" * 8), "pair": 10**6}
    outbox = [bad_side, bad_time, no_pair, {"type": "answer", "key": "no"}]
    args = send(at, "final", 1, outbox, [pair["id"]])
    assert args["acked"] == ["c1" * 8, "c2" * 8, "c4" * 8]  # dropped for good; the keyless one cannot be acknowledged
    assert "side" in args["error"] or "key" in args["error"]
    assert at.warning and _judgments(store) == []
    # A message of another annotator (a switch in the same browser) is not theirs to answer.
    at.session_state["queue_final_widget"] = {"seq": 2, "annotator": 999, "outbox": [answer(pair, "left", "c3" * 8)]}
    at.run()
    assert _judgments(store) == []


def test_noisy_steps_shows_the_chain_position_and_records_step_judgments(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 2, kind="step")
    add_shapes_pairs(store, 2, seed=5)  # final pairs stay out of this page
    at = _open("noisy_steps.py", "bob")
    args = widget_args(at)
    assert len(args["pairs"]) == 2
    with store.read() as con:
        steps = dict(
            con.execute(
                "SELECT p.id, sp.step_index || ' of ' || sp.num_steps || ' of the denoising chain · timestep t = ' "
                "|| p.timestep FROM pairs p JOIN step_pools sp ON sp.id = p.pool_id"
            ).fetchall()
        )
    assert {p["id"]: p["context"] for p in args["pairs"]} == {i: f"Step {text}" for i, text in steps.items()}
    first, second = args["pairs"]
    args = send(at, "step", 1, [answer(first, "tie", "d1" * 8), answer(second, "both_bad", "d2" * 8)], [])
    rows = _judgments(store)
    assert [(r[0], r[1], r[4]) for r in rows] == [(first["id"], "tie", "bob"), (second["id"], "both_bad", "bob")]
    assert args["pairs"] == [] and args["exhausted"] and args["progress"] == {"done": 2, "remaining": 0}


def test_configured_annotators_are_offered_as_a_list(home: Path) -> None:
    Store.open(home)
    (home / "labeling.toml").write_text('annotators = ["ann", "bob"]\n')
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("workbench/ui/annotate.py").run()
    assert at.selectbox(key="annotator_pick").options == ["ann", "bob"]
    at.selectbox(key="annotator_pick").select("bob").run()
    assert at.session_state["annotator"][1] == "bob"
    assert widget_args(at)["pairs"] == [] and widget_args(at)["exhausted"]


def _preview_page() -> None:
    """A page whose sides show two views each: the pair's other image large, its own small."""
    from workbench.ui.judging import View, annotator, judge_queue

    def views(item):
        (a, b) = item.left, item.right
        return [View(*b, "preview"), View(*a, "own")], [View(*a, "preview"), View(*b, "own")]

    annotator_id = annotator()
    if annotator_id is not None:
        judge_queue("final", annotator_id, views=views, context=lambda item: f"pair {item.pair_id}")


def test_a_page_can_show_several_captioned_views_per_side(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 2)
    at = AppTest.from_function(_preview_page, default_timeout=60).run()
    at.text_input(key="annotator_typed").input("ann").run()
    assert not at.exception
    args = widget_args(at)
    for pair in args["pairs"]:
        left, right = pair["sides"]
        assert [v["caption"] for v in left] == ["preview", "own"] and pair["context"] == f"pair {pair['id']}"
        assert (left[0]["image"], left[1]["image"]) == (right[1]["image"], right[0]["image"])
    assert len(args["images"]) == 4
