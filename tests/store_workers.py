"""Processes that use a store concurrently, started by tests/test_store_concurrency.py."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from datastore.records import NewJudgment, insert_judgments, store_stats
from datastore.store import Store


def record_judgments(home: str, annotator_id: int, pair_ids: list[int], n: int) -> None:
    """Record ``n`` judgments, one transaction each, as an annotator clicking through pairs would."""
    store = Store.open(home)
    for i in range(n):
        with store.write() as con:
            insert_judgments(con, [NewJudgment(pair_ids[i % len(pair_ids)], annotator_id, "app", "ab"[i % 2])])


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


if __name__ == "__main__":
    globals()[sys.argv[1]](*json.loads(sys.argv[2]))
