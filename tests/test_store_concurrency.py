"""Many processes share one store: no lock error, no lost write, all-or-nothing transactions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from datastore.records import ImageRow, NewPair, ensure_annotator, insert_images, insert_pairs, upsert_prompts
from datastore.sql import scalar
from datastore.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _worker(func: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "store_workers.py"), func, json.dumps(list(args))],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )


def _seed_pairs(store: Store, n: int) -> list[int]:
    images = [store.media.put_image(Image.new("RGB", (8, 8), (i % 256, i // 256, 0))) for i in range(n + 1)]
    with store.write() as con:
        insert_images(con, [ImageRow(im) for im in images])
        prompt_id = upsert_prompts(con, ["a red square"])["a red square"]
        return insert_pairs(con, [NewPair(prompt_id, images[i].id, images[i + 1].id) for i in range(n)])


def _count(store: Store, where: str = "true") -> int:
    with store.read() as con:
        return scalar(con, f"SELECT count(*) FROM judgments WHERE {where}")


def test_eight_writers_and_a_reader_lose_nothing(store: Store, tmp_path: Path) -> None:
    """8 annotators record 500 judgments each, one at a time as the app does, while stats run in a loop."""
    pair_ids = _seed_pairs(store, 500)
    with store.write() as con:
        annotators = [ensure_annotator(con, f"person-{i}") for i in range(8)]
    stop, loops = tmp_path / "stop", tmp_path / "loops"
    reader = _worker("query_stats_until", str(store.home), str(stop), str(loops))
    writers = [
        _worker("record_through_inbox", str(store.home), a, pair_ids, str(tmp_path / f"acks-{a}"))
        for a in annotators
    ]
    for w in writers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    stop.touch()
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert int(loops.read_text()) > 0
    assert _count(store) == 4000
    with store.read() as con:
        per_annotator = con.execute(
            "SELECT annotator_id, count(DISTINCT pair_id) FROM judgments GROUP BY 1"
        ).fetchall()
    assert sorted(n for _, n in per_annotator) == [500] * 8


def test_sigkill_inside_a_transaction_leaves_none_of_it(store: Store, tmp_path: Path) -> None:
    pair_id = _seed_pairs(store, 1)[0]
    with store.write() as con:
        annotator = ensure_annotator(con, "bot", kind="ai")
    ready = tmp_path / "ready"
    proc = _worker("hold_open_transaction", str(store.home), pair_id, annotator, str(ready))
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    reopened = Store.open(store.home)
    assert _count(reopened) == 0
    with reopened.write() as con:  # the store is writable again: the kernel dropped the dead writer's lock
        con.execute(
            "INSERT INTO judgments (pair_id, annotator_id, source, outcome) VALUES (?, ?, 'ai', 'b')",
            [pair_id, annotator],
        )
    assert _count(reopened) == 1


def test_sigkill_during_repeated_multi_row_writes_keeps_whole_batches(store: Store, tmp_path: Path) -> None:
    pair_id = _seed_pairs(store, 1)[0]
    with store.write() as con:
        annotator = ensure_annotator(con, "bot", kind="ai")
    batch = 400
    for delay in (0.3, 0.75):
        ready = tmp_path / f"ready-{delay}"
        proc = _worker("write_batches_forever", str(store.home), pair_id, annotator, batch, str(ready))
        _wait_for(ready, proc)
        before = _count(store)
        deadline = time.monotonic() + 120
        while _count(store) == before and time.monotonic() < deadline:  # the writer is committing batches
            time.sleep(0.05)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        total = _count(Store.open(store.home))
        assert total % batch == 0, f"a partial batch survived: {total} rows"
        assert total > before


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.01)
