"""Processes that use a store concurrently, started by tests/test_store_concurrency.py."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from datastore.records import NewJudgment, insert_judgments, store_stats
from datastore.store import Store


def query_stats_until(home: str, stop_file: str, result_file: str) -> None:
    """Run the stats queries in a loop until ``stop_file`` exists; write how many loops ran."""
    store = Store.open(home)
    loops = 0
    while not Path(stop_file).exists():
        with store.read() as con:
            store_stats(con)
        loops += 1
    Path(result_file).write_text(str(loops))


def write_batches_forever(home: str, pair_id: int, annotator_id: int, batch: int, ready_file: str) -> None:
    """Write ``batch`` judgments per transaction, in several statements, until killed."""
    store = Store.open(home)
    Path(ready_file).touch()
    while True:
        with store.write() as con:
            for _ in range(4):
                insert_judgments(con, [NewJudgment(pair_id, annotator_id, "ai", "a")] * (batch // 4))
                time.sleep(0.002)


def hold_open_transaction(home: str, pair_id: int, annotator_id: int, ready_file: str) -> None:
    """Insert rows inside a transaction, then sleep before committing (the test kills us there)."""
    store = Store.open(home)
    with store.write() as con:
        insert_judgments(con, [NewJudgment(pair_id, annotator_id, "ai", "a")] * 500)
        Path(ready_file).touch()
        time.sleep(60)


def record_through_inbox(home: str, annotator_id: int, pair_ids: list[int], ack_file: str) -> None:
    """Record one judgment per pair through the inbox, appending each acknowledged pair id to ``ack_file``."""
    store = Store.open(home)
    with open(ack_file, "a") as acks:
        for i, pair_id in enumerate(pair_ids):
            store.record_judgment(NewJudgment(pair_id, annotator_id, "app", "ab"[i % 2]))
            acks.write(f"{pair_id}\n")
            acks.flush()


def read_stats_forever(home: str, ready_file: str) -> None:
    """Read the stats in a loop (each read applies the pending inbox) until killed."""
    store = Store.open(home)
    Path(ready_file).touch()
    while True:
        with store.read() as con:
            store_stats(con)


def stall_drain(home: str, stage: str, ready_file: str) -> None:
    """Apply the inbox, stopping ``before_commit`` or ``after_commit`` of DuckDB (the test kills us there)."""
    store = Store.open(home)
    inbox = store.inbox
    if stage == "before_commit":
        apply = inbox.apply

        def stalled_apply(con):
            through = apply(con)
            Path(ready_file).touch()
            time.sleep(60)
            return through

        inbox.apply = stalled_apply
    else:

        def stalled_forget(through):
            Path(ready_file).touch()
            time.sleep(60)

        inbox.forget_through = stalled_forget
    with store.read():
        pass


if __name__ == "__main__":
    globals()[sys.argv[1]](*json.loads(sys.argv[2]))
