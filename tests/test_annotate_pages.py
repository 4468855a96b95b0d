"""The Annotate and Noisy-steps pages headless through AppTest, on a real store.

AppTest runs no JavaScript: these tests read what the server hands the judging widget and put
the widget's messages in its place (the browser tests drive the real widget).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from labeling_data import add_shapes_pairs
from streamlit.testing.v1 import AppTest

from datastore.records import insert_previews
from datastore.store import Store
from labeling.answers import now
from labeling.queue import human_annotator, next_pairs
from workbench.access import add_user, remove_user
from workbench.generation import generate_step_pools
from workbench.generation_config import GenerationConfig
from workbench.pipelines import load_pipeline
from workbench.toy import TOY_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
COMPLETION, X0 = "finished image this continuation leads to", "predicted x0 at this step"
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
        "gold": pair["gold"], "preview": pair["preview"], "shown_at": SHOWN, "answered_at": ANSWERED,
    }  # fmt: skip


def send(
    at: AppTest,
    kind: str,
    seq: int,
    outbox: list[dict],
    held: list[int],
    skipped: tuple[int, ...] = (),
    more: bool = False,
) -> dict:
    """Deliver a widget message as the browser would and run; returns the widget's new args."""
    annotator = widget_args(at)["annotator"]
    value = {"seq": seq, "annotator": annotator, "outbox": outbox, "held": held, "skipped": list(skipped), "more": more}
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


def test_the_queue_is_refilled_from_two_pairs_left_and_on_asks_until_full(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 12)
    at = _open("annotate.py", "ann")
    args = widget_args(at)
    pairs = args["pairs"]
    assert (args["prefetch"], args["refill_at"]) == (5, 2)
    # Four, then three left: no draw (each is a store write).
    args = send(at, "final", 1, [answer(pairs[0], "left", "a1" * 8)], [p["id"] for p in pairs[1:]])
    assert [p["id"] for p in args["pairs"]] == [p["id"] for p in pairs[1:]]
    args = send(at, "final", 2, [answer(pairs[1], "left", "a2" * 8)], [p["id"] for p in pairs[2:]])
    assert [p["id"] for p in args["pairs"]] == [p["id"] for p in pairs[2:]]
    # Two left: topped up to five.
    args = send(at, "final", 3, [answer(pairs[2], "left", "a3" * 8)], [p["id"] for p in pairs[3:]])
    assert len(args["pairs"]) == 5 and [p["id"] for p in args["pairs"][:2]] == [p["id"] for p in pairs[3:]]
    # Four left again: an explicit ask for more gets the fifth.
    held = [p["id"] for p in args["pairs"][1:]]
    args = send(at, "final", 4, [answer(args["pairs"][0], "left", "a4" * 8)], held)
    assert [p["id"] for p in args["pairs"]] == held
    args = send(at, "final", 5, [], held, more=True)
    assert len(args["pairs"]) == 5 and [p["id"] for p in args["pairs"][:4]] == held
    assert len(_judgments(store)) == 4


def _pair(pair_id: int) -> dict:
    return {"id": pair_id, "left_image": "a", "gold": False, "preview": None}


def test_an_answer_for_a_pair_never_handed_to_the_annotator_is_refused(home: Path) -> None:
    store = Store.open(home)
    made = [p.pair_id for p in add_shapes_pairs(store, 8)]
    at = _open("annotate.py", "ann")
    args = widget_args(at)
    ann, shown = args["annotator"], [p["id"] for p in args["pairs"]]
    (bobs,), _ = next_pairs(store, human_annotator(store, "bob"), 1, exclude=tuple(shown))
    never = next(p for p in made if p not in {*shown, bobs.pair_id})
    # A pair that exists but was never handed out, and one handed to another annotator.
    outbox = [answer(_pair(never), "left", "9a" * 8), answer(_pair(bobs.pair_id), "left", "9b" * 8)]
    args = send(at, "final", 1, outbox, shown)
    assert args["acked"] == ["9a" * 8, "9b" * 8] and "never handed" in args["error"]
    assert at.warning and _judgments(store) == []
    # ann's leases expire and another draw runs; then a new server session (a restart) gets an
    # answer from ann's browser for a pair handed before: it is stored.
    with store.write() as con:
        con.execute("UPDATE pair_leases SET expires_at = ?", [now()])
    next_pairs(store, human_annotator(store, "cy"), 1)
    fresh = AppTest.from_function(_widget_callback, default_timeout=60)
    fresh.session_state["annotator"] = (ann, "ann")
    fresh.session_state["message"] = {"seq": 1, "annotator": ann, "outbox": [answer(_pair(shown[0]), "left", "9c" * 8)]}
    fresh.run()
    assert not fresh.exception and [(r[0], r[4]) for r in _judgments(store)] == [(shown[0], "ann")]


def test_the_widget_files_ship_in_the_wheel(tmp_path: Path) -> None:
    """A wheel built from the packages and pyproject.toml alone holds every file of judge_widget/."""
    src = tmp_path / "src"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = package.rstrip("*")
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
         "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    widget = ROOT / "workbench" / "ui" / "judge_widget"
    with zipfile.ZipFile(wheel) as z:
        shipped = {n.removeprefix("workbench/ui/judge_widget/") for n in z.namelist() if "/judge_widget/" in n}
    assert shipped == {f.name for f in widget.iterdir()} >= {"index.html", "judge.js", "judge.css"}


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
    assert "meant for scorers" in at.info[0].value  # no completion previews: only predicted x0s to judge
    args = widget_args(at)
    assert len(args["pairs"]) == 2
    assert all(p["preview"] is None for p in args["pairs"])
    assert {v["caption"] for p in args["pairs"] for side in p["sides"] for v in side} == {f"{X0} (no completion preview)"}
    with store.read() as con:
        steps = dict(
            con.execute(
                "SELECT p.id, sp.step_index || ' of ' || sp.num_steps || ' of the denoising chain · timestep t = ' "
                "|| p.timestep FROM pairs p JOIN step_pools sp ON sp.id = p.pool_id"
            ).fetchall()
        )
    scorers = "no completion previews: this pair is meant for scorers"
    assert {p["id"]: p["context"] for p in args["pairs"]} == {i: f"Step {text} · {scorers}" for i, text in steps.items()}
    first, second = args["pairs"]
    args = send(at, "step", 1, [answer(first, "tie", "d1" * 8), answer(second, "both_bad", "d2" * 8)], [])
    rows = _judgments(store)
    assert [(r[0], r[1], r[4]) for r in rows] == [(first["id"], "tie", "bob"), (second["id"], "both_bad", "bob")]
    assert _previews(store) == [None, None]
    assert args["pairs"] == [] and args["exhausted"] and args["progress"] == {"done": 2, "remaining": 0}


def _previews(store: Store) -> list[str | None]:
    with store.read() as con:
        return [r[0] for r in con.execute("SELECT preview FROM judgments ORDER BY id").fetchall()]


def test_noisy_steps_shows_completion_previews_large_and_records_what_was_judged(home: Path) -> None:
    store = Store.open(home)
    cfg = GenerationConfig(num_inference_steps=4, pool_k=3, pool_steps=(2,), seed=3, batch_size=4, previews="completion")
    generate_step_pools(store, load_pipeline(TOY_MODEL_DIR), "toy", ["a red circle at the top left"], cfg, progress=False)
    (bare,) = add_shapes_pairs(store, 1, kind="step")  # a step pair without previews
    with store.read() as con:
        completion = dict(con.execute("SELECT image_id, preview_id FROM image_previews WHERE kind = 'completion'").fetchall())
        pairs = dict(con.execute("SELECT id, [image_a, image_b] FROM pairs WHERE pool_id IS NOT NULL").fetchall())
    assert len(completion) == 3 and len(pairs) == 4  # 3 candidates paired all ways, and the bare pair
    at = _open("noisy_steps.py", "cy")
    assert not at.info  # some step pairs can be judged on their finished images
    args = widget_args(at)
    by_preview = {p["id"]: p["preview"] for p in args["pairs"]}
    assert by_preview == {i: None if i == bare.pair_id else "completion" for i in pairs}
    for pair in args["pairs"]:
        if pair["preview"] is None:
            continue
        shown = [pairs[pair["id"]][i] for i in ((0, 1) if pair["left_image"] == "a" else (1, 0))]
        # Each side: the completion of its candidate large, the candidate's predicted x0 small beside it.
        for side, image in zip(pair["sides"], shown, strict=True):
            assert [(v["image"], v["caption"]) for v in side] == [(completion[image], COMPLETION), (image, X0)]
    assert set(args["images"]) == set(completion) | set(completion.values()) | set(pairs[bare.pair_id])
    previewed = next(p for p in args["pairs"] if p["preview"] == "completion")
    bare_pair = next(p for p in args["pairs"] if p["id"] == bare.pair_id)
    # An answer claiming another preview than the pair was handed with is dropped; so is an unknown kind.
    lie = {**answer(bare_pair, "left", "e0" * 8), "preview": "completion"}
    unknown = {**answer(previewed, "left", "e1" * 8), "preview": "x0"}
    args = send(at, "step", 1, [lie, unknown], [p["id"] for p in args["pairs"]])
    assert args["acked"] == ["e0" * 8, "e1" * 8] and "preview" in args["error"] and _judgments(store) == []
    outbox = [answer(previewed, "left", "e2" * 8), answer(bare_pair, "right", "e3" * 8)]
    send(at, "step", 2, outbox, [p["id"] for p in args["pairs"] if p["id"] not in (previewed["id"], bare.pair_id)])
    assert [(r[0], r[4]) for r in _judgments(store)] == [(previewed["id"], "cy"), (bare.pair_id, "cy")]
    assert _previews(store) == ["completion", None]


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
    from workbench.ui.judging import Sides, View, annotator, judge_queue

    def views(items):
        return [
            Sides([View(*i.right, "preview"), View(*i.left, "own")], [View(*i.left, "preview"), View(*i.right, "own")])
            for i in items
        ]

    annotator_id = annotator()
    if annotator_id is not None:
        judge_queue("final", annotator_id, views=views, context=lambda item, sides: f"pair {item.pair_id}")


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


def _widget_callback() -> None:
    """The widget's message callback alone, as Streamlit runs it before the page (and its sign-in check)."""
    import streamlit as st

    from workbench.ui.judging import _on_message, pair_views

    if "message" in st.session_state:
        _on_message("final", st.session_state["message"]["annotator"], pair_views, None, st.session_state["message"])


def test_answers_of_a_person_removed_meanwhile_are_refused(home: Path, monkeypatch) -> None:
    monkeypatch.delenv("WORKBENCH_USERS_FILE", raising=False)
    monkeypatch.setenv("WORKBENCH_REQUIRE_SIGN_IN", "1")
    store = Store.open(home)
    made = add_shapes_pairs(store, 3)
    ann = add_user(store, home / "users.toml", "ann", "annotator", "ann's password")
    add_user(store, home / "users.toml", "ada", "admin", "ada's password")
    next_pairs(store, ann.annotator_id, 3)  # handed to ann's browser
    at = AppTest.from_function(_widget_callback, default_timeout=60)
    at.session_state["signed_in"] = "ann"

    def deliver(seq: int, pair_id: int) -> None:
        pair = {"id": pair_id, "left_image": "a", "gold": False, "preview": None}
        at.session_state["message"] = {"seq": seq, "annotator": ann.annotator_id, "outbox": [answer(pair, "left", f"f{seq}" * 8)]}
        at.run()
        assert not at.exception

    deliver(1, made[0].pair_id)
    remove_user(home / "users.toml", "ann")
    deliver(2, made[1].pair_id)  # in flight when ann was removed
    remove_user(home / "users.toml", "ada")  # nobody left: sign-in is no longer asked on loopback
    deliver(3, made[2].pair_id)
    assert [r[0] for r in _judgments(store)] == [made[0].pair_id]
    assert "signed_in" not in at.session_state


def test_noisy_steps_says_which_pairs_are_for_scorers_in_a_mixed_store(home: Path) -> None:
    store = Store.open(home)
    previewed, bare = add_shapes_pairs(store, 2, kind="step")
    (finished,) = add_shapes_pairs(store, 1, seed=5)  # its images stand in for the completions
    with store.write() as con:
        images = dict(con.execute("SELECT id, [image_a, image_b] FROM pairs").fetchall())
        insert_previews(con, "completion", list(zip(images[previewed.pair_id], images[finished.pair_id], strict=True)))
    at = _open("noisy_steps.py", "dee")
    assert not at.info  # some step pairs can be judged on their finished images
    shown = {p["id"]: (p["preview"], p["context"]) for p in widget_args(at)["pairs"]}
    assert shown[previewed.pair_id][0] == "completion" and "scorers" not in shown[previewed.pair_id][1]
    assert shown[bare.pair_id][0] is None
    assert shown[bare.pair_id][1].endswith("· no completion previews: this pair is meant for scorers")
