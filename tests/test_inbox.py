"""The judgment inbox: fast acknowledged writes, applied exactly once, seen by every later read."""

from __future__ import annotations

import dataclasses
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from test_store_concurrency import _count, _seed_pairs, _wait_for, _worker

from datastore.errors import DuplicateJudgmentError, NotFoundError, StoreError
from datastore.records import NewJudgment, ensure_annotator, insert_judgments
from datastore.store import Store


def _annotators(store: Store, n: int) -> list[int]:
    with store.write() as con:
        return [ensure_annotator(con, f"person-{i}") for i in range(n)]


def _judged(store: Store) -> list[tuple[int, int]]:
    with store.read() as con:
        return con.execute("SELECT pair_id, annotator_id FROM judgments ORDER BY id").fetchall()


def test_a_read_right_after_an_acknowledged_write_sees_it(store: Store) -> None:
    pairs = _seed_pairs(store, 3)
    [ann] = _annotators(store, 1)
    _count(store)  # this process has read the store before the write
    store.record_judgment(NewJudgment(pairs[0], ann, "app", "b", left_image="a"))
    assert store.inbox.has_pending()
    with store.read() as con:
        assert con.execute(
            "SELECT pair_id, annotator_id, source, outcome, left_image FROM judgments"
        ).fetchall() == [(pairs[0], ann, "app", "b", "a")]
    assert not store.inbox.has_pending()
    # A write block applies the inbox first too.
    store.record_judgment(NewJudgment(pairs[1], ann, "app", "a"))
    with store.write() as con:
        assert con.execute("SELECT count(*) FROM judgments").fetchall()[0][0] == 2
    # Another process's acknowledged write is seen by this process's next read.
    acks = store.home / "acks"
    proc = _worker("record_through_inbox", str(store.home), ann, [pairs[2]], str(acks))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert _judged(store) == [(pairs[0], ann), (pairs[1], ann), (pairs[2], ann)]


def test_a_bad_judgment_is_refused_at_write_time_and_nothing_enters_the_inbox(store: Store) -> None:
    [pair] = _seed_pairs(store, 1)
    [ann] = _annotators(store, 1)
    with pytest.raises(NotFoundError, match=f"pair {pair + 1} does not exist"):
        store.record_judgment(NewJudgment(pair + 1, ann, "app", "a"))
    with pytest.raises(NotFoundError, match=f"annotator {ann + 7} does not exist"):
        store.record_judgment(NewJudgment(pair, ann + 7, "app", "a"))
    with pytest.raises(StoreError, match="outcome must be one of .* got 'left'"):
        store.record_judgment(NewJudgment(pair, ann, "app", "left"))
    with pytest.raises(StoreError, match="confidence must be within"):
        store.record_judgment(NewJudgment(pair, ann, "app", "a", confidence=2.0))
    assert store.inbox.pending() == []
    store.record_judgment(NewJudgment(pair, ann, "app", "tie"))
    with pytest.raises(DuplicateJudgmentError, match=f"annotator {ann} already judged pair {pair}"):
        store.record_judgment(NewJudgment(pair, ann, "app", "a"))
    assert len(store.inbox.pending()) == 1
    assert _judged(store) == [(pair, ann)]
    # A pair made after this process filled its id cache is accepted.
    new_pair = _seed_pairs(store, 2)[1]  # images 0-1 again (the same pair), then 1-2
    assert new_pair != pair
    store.record_judgment(NewJudgment(new_pair, ann, "app", "a"))
    assert _count(store) == 2


@pytest.mark.parametrize("stage", ["before_commit", "after_commit"])
def test_sigkill_during_a_drain_applies_every_judgment_once(store: Store, tmp_path: Path, stage: str) -> None:
    pairs = _seed_pairs(store, 5)
    [ann] = _annotators(store, 1)
    for p in pairs:
        store.record_judgment(NewJudgment(p, ann, "app", "a"))
    ready = tmp_path / "ready"
    proc = _worker("stall_drain", str(store.home), stage, str(ready))
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    reopened = Store.open(store.home)
    # The dead drain left every row in the inbox; killed after its commit, DuckDB holds them too.
    assert len(reopened.inbox.pending()) == 5
    with reopened._read_without_drain() as con:
        assert con.execute("SELECT count(*) FROM judgments").fetchall()[0][0] == (
            5 if stage == "after_commit" else 0
        )
    assert _judged(reopened) == [(p, ann) for p in pairs]
    assert reopened.inbox.pending() == []
    assert _count(reopened) == 5


def test_sigkill_of_writers_and_drainers_at_random_moments_keeps_every_acknowledged_judgment(
    store: Store, tmp_path: Path
) -> None:
    pairs = _seed_pairs(store, 240)
    annotators = _annotators(store, 2)
    rng = random.Random(0)
    acked: set[tuple[int, int]] = set()
    for round_ in range(3):
        ready = tmp_path / f"ready-{round_}"
        drainer = _worker("read_stats_forever", str(store.home), str(ready))
        _wait_for(ready, drainer)
        writers = {
            a: _worker(
                "record_through_inbox",
                str(store.home),
                a,
                pairs[80 * round_ : 80 * (round_ + 1)],
                str(tmp_path / f"acks-{round_}-{a}"),
            )
            for a in annotators
        }
        first_ack = tmp_path / f"acks-{round_}-{annotators[0]}"
        while not first_ack.exists() or not first_ack.read_text():
            assert writers[annotators[0]].poll() is None, writers[annotators[0]].stderr.read()
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        for proc in (*writers.values(), drainer):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        for a in annotators:
            acks = tmp_path / f"acks-{round_}-{a}"  # absent when killed before its first judgment
            acked |= {(int(p), a) for p in (acks.read_text().split() if acks.exists() else [])}
    judged = _judged(Store.open(store.home))
    assert len(judged) == len(set(judged)), "a judgment was applied twice"
    assert acked <= set(judged), "an acknowledged judgment is missing"
    # A killed writer may have committed one judgment it never got to acknowledge.
    assert len(set(judged) - acked) <= 2 * 3
    assert 0 < len(acked) < 2 * 240  # killed part-way


def test_a_judgment_records_what_it_was_made_on_and_a_bad_preview_is_refused(store: Store) -> None:
    pairs = _seed_pairs(store, 3)
    [ann] = _annotators(store, 1)
    for bad in ("x0", "Completion", 1, True):
        with pytest.raises(StoreError, match=f"judgment preview must be one of \\('completion',\\) or None, got {bad!r}"):
            store.record_judgment(NewJudgment(pairs[0], ann, "app", "a", preview=bad))
        with pytest.raises(StoreError, match="judgment preview"), store.write() as con:
            insert_judgments(con, [NewJudgment(pairs[0], ann, "ai", "a", preview=bad)])
    assert store.inbox.pending() == []
    store.record_judgment(NewJudgment(pairs[0], ann, "app", "a", preview="completion"))
    store.record_judgment(NewJudgment(pairs[1], ann, "app", "b"))
    with store.read() as con:
        rows = con.execute("SELECT pair_id, preview FROM judgments ORDER BY id").fetchall()
    assert rows == [(pairs[0], "completion"), (pairs[1], None)]


def test_an_inbox_file_from_before_previews_gets_the_column_and_its_rows_apply(store: Store) -> None:
    pairs = _seed_pairs(store, 3)
    [ann] = _annotators(store, 1)
    (store.home / "inbox.sqlite").unlink()
    old = sqlite3.connect(store.home / "inbox.sqlite")
    columns = [f.name for f in dataclasses.fields(NewJudgment) if f.name != "preview"]
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        f"CREATE TABLE pending (id INTEGER PRIMARY KEY AUTOINCREMENT, {', '.join(columns)});"
        "CREATE TABLE answered (pair_id INTEGER NOT NULL, annotator_id INTEGER NOT NULL,"
        " withdrawn INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (pair_id, annotator_id)) WITHOUT ROWID;"
    )
    row = {**dict.fromkeys(columns), "pair_id": pairs[0], "annotator_id": ann, "source": "app", "outcome": "a", "is_gold": 0}
    old.execute(f"INSERT INTO pending ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", list(row.values()))
    old.commit()
    old.close()
    reopened = Store.open(store.home)  # a judgment an older version acknowledged, still pending
    reopened.record_judgment(NewJudgment(pairs[1], ann, "app", "b", preview="completion"))
    with reopened.read() as con:
        rows = con.execute("SELECT pair_id, preview FROM judgments ORDER BY id").fetchall()
        quarantined = con.execute("SELECT count(*) FROM inbox_quarantine").fetchall()[0][0]
    assert rows == [(pairs[0], None), (pairs[1], "completion")] and quarantined == 0
