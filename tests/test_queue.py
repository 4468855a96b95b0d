"""The annotation queue's policy on a temporary store."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from labeling_data import add_shapes_pairs

from datastore.records import NewJudgment, ensure_annotator, insert_judgments, insert_previews
from datastore.store import Store
from labeling.answers import Answer, now, outcome, record_answers, withdraw_answer
from labeling.errors import LabelingError
from labeling.queue import (
    Progress,
    QueueConfig,
    QueueItem,
    completion_previews,
    gold_accuracy,
    handed,
    human_annotator,
    next_pairs,
    progress,
    step_pairs_have_previews,
)


def next_pair(store: Store, annotator_id: int, **options) -> tuple[QueueItem | None, Progress]:
    """The next pair as a browser asking for one pair gets it, and the progress."""
    items, progress_now = next_pairs(store, annotator_id, 1, **options)
    return (items[0] if items else None), progress_now


def record_answer(store: Store, item: QueueItem, annotator_id: int, side: str) -> list[str]:
    """A key press on the shown pair, recorded as the browser records it; the statuses."""
    at = now()
    answer = Answer(None, item.pair_id, side, item.left_image, item.gold_outcome is not None, item.shown_at, at)
    return record_answers(store, annotator_id, [answer])


def _answer_all(store: Store, annotator_id: int, config: QueueConfig, kinds=("final",), side="left") -> list[int]:
    """Answer until the queue is empty; the pair ids in the order they came."""
    seen = []
    while True:
        item, _ = next_pair(store, annotator_id, kinds=kinds, config=config)
        if item is None:
            return seen
        record_answer(store, item, annotator_id, side)
        seen.append(item.pair_id)


def test_overlap_caps_judges_per_pair_and_nobody_sees_a_pair_twice(store: Store) -> None:
    pairs = add_shapes_pairs(store, 6)
    config = QueueConfig(overlap=2, gold_rate=0.0)
    people = [human_annotator(store, f"person {i}") for i in range(4)]
    seen = {p: _answer_all(store, p, config) for p in people}
    per_pair = Counter(pair for ids in seen.values() for pair in ids)
    assert per_pair == {p.pair_id: 2 for p in pairs}
    assert all(len(ids) == len(set(ids)) for ids in seen.values())
    # 6 pairs x 2 judges: the first two people take everything.
    assert [len(seen[p]) for p in people] == [6, 6, 0, 0]


def test_fewest_judgments_first(store: Store) -> None:
    pairs = add_shapes_pairs(store, 5)
    config = QueueConfig(overlap=3, gold_rate=0.0)
    ann, bob, cy = (human_annotator(store, n) for n in ("ann", "bob", "cy"))
    # ann judges three pairs, bob the first of those: counts 2, 1, 1, 0, 0.
    for i in range(3):
        item, _ = next_pair(store, ann, config=config)
        record_answer(store, item, ann, "left")
        if i == 0:
            record_answer(store, item, bob, "right")
    counts = Counter()
    with store.read() as con:
        counts.update(dict(con.execute("SELECT pair_id, count(*) FROM judgments GROUP BY pair_id").fetchall()))
    order = []
    while (item := next_pair(store, cy, config=config)[0]) is not None:
        order.append(counts[item.pair_id])
        record_answer(store, item, cy, "tie")
    assert order == [0, 0, 1, 1, 2]
    assert len(order) == len(pairs)


def test_ai_judgments_do_not_count_towards_the_overlap(store: Store) -> None:
    [pair] = add_shapes_pairs(store, 1)
    with store.write() as con:
        bot = ensure_annotator(con, "bot@1", kind="ai")
        insert_judgments(con, [NewJudgment(pair.pair_id, bot, "ai", "a")])
    person = human_annotator(store, "ann")
    item, _ = next_pair(store, person, config=QueueConfig(overlap=1))
    assert item is not None and item.pair_id == pair.pair_id


def test_gold_pairs_come_at_the_configured_rate_and_ignore_the_overlap(store: Store) -> None:
    made = add_shapes_pairs(store, 60, gold_every=3)  # 20 gold pairs, 40 plain
    gold_ids = {p.pair_id for p in made if p.gold}
    config = QueueConfig(overlap=1, gold_rate=0.25, seed=7)
    ann = human_annotator(store, "ann")
    shown = []
    for _ in range(40):
        item, _ = next_pair(store, ann, config=config)
        assert (item.gold_outcome is not None) == (item.pair_id in gold_ids)
        record_answer(store, item, ann, "left")
        shown.append(item.pair_id in gold_ids)
    assert 4 <= sum(shown) <= 16  # 10 expected
    with store.read() as con:
        flagged = con.execute("SELECT count(*) FROM judgments WHERE is_gold").fetchall()[0][0]
    assert flagged == sum(shown)
    # Every gold pair stays open to bob although overlap is 1; of the plain ones, those ann left.
    bob = human_annotator(store, "bob")
    plain_left = 40 - (len(shown) - sum(shown))
    assert progress(store, bob, config=config).remaining == 20 + plain_left
    assert next_pair(store, bob, config=QueueConfig(overlap=1, gold_rate=1.0))[0].pair_id in gold_ids


def test_gold_draw_is_seeded(tmp_path: Path) -> None:
    sequences = []
    for run in range(2):
        store = Store.open(tmp_path / f"home{run}")
        add_shapes_pairs(store, 12, gold_every=2)
        ann = human_annotator(store, "ann")
        sequences.append(_answer_all(store, ann, QueueConfig(gold_rate=0.5, seed=3)))
    assert sequences[0] == sequences[1]
    assert len(sequences[0]) == 12


def test_progress_counts_done_and_remaining(store: Store) -> None:
    add_shapes_pairs(store, 4)
    add_shapes_pairs(store, 3, kind="step", seed=1)
    ann = human_annotator(store, "ann")
    config = QueueConfig(overlap=1, gold_rate=0.0)
    assert progress(store, ann, config=config) == next_pair(store, ann, config=config)[1]
    assert progress(store, ann, config=config) == Progress(done=0, remaining=4)
    item, _ = next_pair(store, ann, kinds=("step",), config=config)
    record_answer(store, item, ann, "both_bad")
    assert progress(store, ann, kinds=("step",), config=config) == Progress(done=1, remaining=2)
    assert progress(store, ann, kinds=("final", "step"), config=config).remaining == 6
    other = human_annotator(store, "bob")
    assert progress(store, other, kinds=("step",), config=config).remaining == 2  # overlap 1: taken by ann


def test_answers_map_sides_to_outcomes_and_keep_times(store: Store) -> None:
    add_shapes_pairs(store, 8)
    ann = human_annotator(store, "ann")
    sides = ["left", "right", "tie", "both_bad", "left", "right", "left", "right"]
    expected = []
    for side in sides:
        item, _ = next_pair(store, ann, config=QueueConfig(gold_rate=0.0))
        record_answer(store, item, ann, side)
        other = "b" if item.left_image == "a" else "a"
        expected.append((item.pair_id, {"left": item.left_image, "right": other}.get(side, side), item.left_image))
    with store.read() as con:
        rows = con.execute(
            "SELECT pair_id, outcome, left_image, source, answered_at > shown_at FROM judgments ORDER BY id"
        ).fetchall()
    assert [r[:3] for r in rows] == expected
    assert all(r[3] == "app" and r[4] for r in rows)
    assert {left for _, _, left in expected} == {"a", "b"}  # sides are mixed


def test_an_answer_twice_is_refused_and_skips_are_excluded(store: Store) -> None:
    add_shapes_pairs(store, 3)
    ann = human_annotator(store, "ann")
    item, _ = next_pair(store, ann)
    assert record_answer(store, item, ann, "left") == ["saved"]
    assert record_answer(store, item, ann, "right") == ["already_judged"]
    with store.read() as con:
        assert con.execute("SELECT outcome FROM judgments").fetchall() == [(outcome("left", item.left_image),)]
    skipped, _ = next_pair(store, ann)
    after, progress_now = next_pair(store, ann, exclude=(skipped.pair_id,))
    assert after.pair_id not in (item.pair_id, skipped.pair_id)
    assert progress_now.remaining == 2  # a skip is not an answer


def test_gold_accuracy_per_annotator(store: Store) -> None:
    made = add_shapes_pairs(store, 8, gold_every=2)
    ann, bob = human_annotator(store, "ann"), human_annotator(store, "bob")
    config = QueueConfig(gold_rate=1.0)
    for annotator_id, right in ((ann, True), (bob, False)):
        for _ in range(4):
            item, _ = next_pair(store, annotator_id, config=config)
            assert item.gold_outcome is not None
            side = "left" if (item.left_image == item.gold_outcome) == right else "right"
            record_answer(store, item, annotator_id, side)
    scores = {g.annotator: g for g in gold_accuracy(store)}
    assert (scores["ann"].judged, scores["ann"].correct, scores["ann"].accuracy) == (4, 4, 1.0)
    assert (scores["bob"].judged, scores["bob"].accuracy) == (4, 0.0)
    assert sum(p.gold for p in made) == 4


def test_config_from_home_and_bad_values(tmp_path: Path) -> None:
    assert QueueConfig.from_home(tmp_path) == QueueConfig()
    (tmp_path / "labeling.toml").write_text('overlap = 5\ngold_rate = 0.25\nannotators = ["ann", "bob"]\n')
    assert QueueConfig.from_home(tmp_path) == QueueConfig(overlap=5, gold_rate=0.25, annotators=("ann", "bob"))
    (tmp_path / "labeling.toml").write_text("overlapp = 5\n")
    with pytest.raises(LabelingError, match="unknown keys \\['overlapp'\\]"):
        QueueConfig.from_home(tmp_path)
    with pytest.raises(LabelingError, match="overlap must be >= 1, got 0"):
        QueueConfig(overlap=0)
    with pytest.raises(LabelingError, match="gold_rate must be within"):
        QueueConfig(gold_rate=1.5)


def test_annotator_names(store: Store) -> None:
    assert human_annotator(store, " ann ") == human_annotator(store, "ann")
    with pytest.raises(LabelingError, match="1 to 100 characters"):
        human_annotator(store, "  ")
    with store.write() as con:
        ensure_annotator(con, "clip@x", kind="ai")
    with pytest.raises(LabelingError, match="AI annotator"):
        human_annotator(store, "clip@x")


def _answer(item, side="left", key=None) -> Answer:
    at = now()
    return Answer(key, item.pair_id, side, item.left_image, item.gold_outcome is not None, at, at)


def test_next_pairs_draws_as_requests_for_one_pair_would_one_after_the_other(store: Store) -> None:
    add_shapes_pairs(store, 12, gold_every=3)
    ann = human_annotator(store, "ann")
    config = QueueConfig(gold_rate=0.3, seed=4)
    batch, progress_now = next_pairs(store, ann, 6, config=config)
    assert progress_now == Progress(done=0, remaining=12) and len(batch) == 6
    # The same pairs, sides and order as answering one requested pair at a time (gold draws included).
    other = human_annotator(store, "ann2")
    for i in range(6):
        item, _ = next_pair(store, ann, config=config, exclude=tuple(b.pair_id for b in batch[:i]))
        assert (item.pair_id, item.left_image) == (batch[i].pair_id, batch[i].left_image)
        record_answer(store, item, ann, "left")
    assert progress(store, ann, config=config).done == 6
    with pytest.raises(LabelingError, match="n must be >= 0"):
        next_pairs(store, other, -1)


def test_leases_keep_the_last_pairs_within_the_overlap(store: Store) -> None:
    add_shapes_pairs(store, 4)
    ann, bob, cy = (human_annotator(store, n) for n in ("ann", "bob", "cy"))
    config = QueueConfig(overlap=1, gold_rate=0.0)
    held, _ = next_pairs(store, ann, 3, config=config)
    # Bob gets the one pair ann does not hold; cy gets nothing while both leases last.
    rest, progress_bob = next_pairs(store, bob, 3, config=config)
    assert [r.pair_id for r in rest] == [p for p in _all_pairs(store) if p not in {h.pair_id for h in held}]
    assert progress_bob.remaining == 1
    assert next_pairs(store, cy, 3, config=config)[0] == []
    # An answer replaces the lease; an expired lease frees the pair.
    record_answers(store, ann, [_answer(held[0])])
    with store.write() as con:
        con.execute("UPDATE pair_leases SET expires_at = ? WHERE annotator_id = ?", [now(), bob])
    freed, _ = next_pairs(store, cy, 3, config=config)
    assert [f.pair_id for f in freed] == [rest[0].pair_id]
    # Renewed leases of pairs a browser holds keep them out of others' queues.
    again, _ = next_pairs(store, ann, 3, config=config, held=tuple(h.pair_id for h in held[1:]))
    assert again == []
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM pair_leases WHERE annotator_id = ?", [ann]).fetchall() == [(3,)]
    # A pair the browser skipped is no longer reserved for it.
    next_pairs(store, ann, 0, config=config, held=(held[1].pair_id,), exclude=(held[2].pair_id,))
    assert [i.pair_id for i in next_pairs(store, bob, 3, config=config)[0]] == [held[2].pair_id]


def test_handed_tells_every_pair_leased_to_an_annotator_even_after_its_lease_expired(store: Store) -> None:
    pairs = [p.pair_id for p in add_shapes_pairs(store, 4)]
    ann, bob = human_annotator(store, "ann"), human_annotator(store, "bob")
    config = QueueConfig(gold_rate=0.0)
    first, second = next_pairs(store, ann, 2, config=config)[0]
    never = [p for p in pairs if p not in (first.pair_id, second.pair_id)]
    assert [handed(store, ann, p) for p in pairs] == [p not in never for p in pairs]
    assert not handed(store, bob, first.pair_id)
    # ann judges the first and skips the second; every lease expires and others draw meanwhile.
    record_answers(store, ann, [_answer(first)])
    next_pairs(store, ann, 0, config=config, exclude=(second.pair_id,))
    with store.write() as con:
        con.execute("UPDATE pair_leases SET expires_at = ?", [now()])
    next_pairs(store, bob, 0, config=config)
    with store.read() as con:
        leases = con.execute("SELECT pair_id FROM pair_leases WHERE annotator_id = ?", [ann]).fetchall()
    # The judged pair's lease went (its judgment tells), the skipped one's row stays.
    assert leases == [(second.pair_id,)]
    assert [handed(store, ann, p) for p in pairs] == [p not in never for p in pairs]
    assert handed(store, ann, 10**6) is False


def _all_pairs(store: Store) -> list[int]:
    with store.read() as con:
        return [r[0] for r in con.execute("SELECT id FROM pairs ORDER BY id").fetchall()]


def test_answers_by_key_are_recorded_once_and_undo_opens_the_pair_again(store: Store) -> None:
    add_shapes_pairs(store, 3)
    ann = human_annotator(store, "ann")
    first, second = next_pairs(store, ann, 2)[0]
    answers = [_answer(first, "right", "k1"), _answer(second, "tie", "k2")]
    assert record_answers(store, ann, answers) == ["saved", "saved"]
    # A resend (lost acknowledgement, server restart) writes nothing.
    assert record_answers(store, ann, answers) == ["resent", "resent"]
    # The same pair under a new key (another tab) is refused quietly too.
    assert record_answers(store, ann, [_answer(first, "left", "k3")]) == ["already_judged"]
    assert withdraw_answer(store, ann, "k1") == first.pair_id
    assert withdraw_answer(store, ann, "k1") == first.pair_id  # twice is harmless
    assert withdraw_answer(store, ann, "nope") is None
    # The undone pair is open again; a resend of the undone answer stays ignored.
    assert record_answers(store, ann, [_answer(first, "right", "k1")]) == ["resent"]
    assert first.pair_id in [i.pair_id for i in next_pairs(store, ann, 3)[0]]
    assert record_answers(store, ann, [_answer(first, "left", "k4")]) == ["saved"]
    with store.read() as con:
        rows = con.execute(
            "SELECT pair_id, outcome, idempotency_key, withdrawn FROM judgments ORDER BY id"
        ).fetchall()
    flip = {"a": "b", "b": "a"}
    assert rows == [
        (first.pair_id, flip[first.left_image], "k1", True),
        (second.pair_id, "tie", "k2", False),
        (first.pair_id, first.left_image, "k4", False),
    ]
    assert progress(store, ann).done == 2
    with pytest.raises(LabelingError, match="side must be one of"):
        record_answers(store, ann, [_answer(first, "up", "k5")])


def test_an_inbox_file_from_before_idempotency_keys_gets_their_columns(tmp_path: Path) -> None:
    import sqlite3

    home = tmp_path / "home"
    home.mkdir()
    old = sqlite3.connect(home / "inbox.sqlite")
    columns = ", ".join(f.name for f in dataclasses.fields(NewJudgment) if f.name != "idempotency_key")
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        f"CREATE TABLE pending (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns});"
        "CREATE TABLE answered (pair_id INTEGER NOT NULL, annotator_id INTEGER NOT NULL,"
        " PRIMARY KEY (pair_id, annotator_id)) WITHOUT ROWID;"
    )
    old.close()
    store = Store.open(home)
    add_shapes_pairs(store, 1)
    ann = human_annotator(store, "ann")
    item, _ = next_pair(store, ann)
    assert record_answers(store, ann, [_answer(item, key="f1")] * 2) == ["saved", "resent"]
    with store.read() as con:
        assert con.execute("SELECT idempotency_key FROM judgments").fetchall() == [("f1",)]


def test_completion_previews_are_looked_up_and_an_answer_records_its_preview(store: Store) -> None:
    made = add_shapes_pairs(store, 2, kind="step")
    with store.read() as con:
        (a0, b0), (a1, b1) = (con.execute("SELECT image_a, image_b FROM pairs WHERE id = ?", [p.pair_id]).fetchone() for p in made)
        paths = dict(con.execute("SELECT id, path FROM images").fetchall())
    assert not step_pairs_have_previews(store)
    with store.write() as con:  # pair 0's images preview each other; pair 1 has one preview only
        insert_previews(con, "completion", [(a0, b0), (b0, a0), (a1, b0)])
    assert step_pairs_have_previews(store)
    assert completion_previews(store, [a0, b0, b1]) == {a0: (b0, paths[b0]), b0: (a0, paths[a0])}
    assert completion_previews(store, []) == {}
    ann = human_annotator(store, "ann")
    item, _ = next_pair(store, ann, kinds=("step",))
    answer = dataclasses.replace(_answer(item, key="p1"), preview="completion")
    assert answer.judgment(ann).preview == "completion" and _answer(item).judgment(ann).preview is None
    assert record_answers(store, ann, [answer]) == ["saved"]
    with store.read() as con:
        assert con.execute("SELECT pair_id, preview FROM judgments").fetchall() == [(item.pair_id, "completion")]
