"""Concurrency storm: 8 writers and 2 readers on one store, SIGKILLed at random moments.

    .venv/bin/python benchmarks/store_storm.py --seconds 120 --malformed 0.0
    .venv/bin/python benchmarks/store_storm.py --seconds 120 --malformed 0.2

8 writer processes record single judgments through the inbox (``Store.record_judgment``), each
writing the pair it acknowledged to its own file only after the call returned; 2 reader
processes run ``store_stats`` in a loop (each read applies the pending inbox). Every 0.3-1.5 s
one of the ten, drawn at random, is SIGKILLed and started again (a restarted writer judges as a
new annotator, so no judgment is offered twice). With ``--malformed F`` a share F of the
judgments are malformed: half offered through ``record_judgment`` (``score_a="high"``,
``is_gold="no"``, ...), which must refuse them, and half written straight into the inbox file
as an older version or a hand edit would, which the store must quarantine without blocking.

At the end the store is opened once more and compared with the acknowledgements: acknowledged
(valid), found, lost (acknowledged, not in the store), duplicated (a judgment stored twice),
unacknowledged but stored (killed between the commit and the acknowledgement), refused,
raw malformed rows written, quarantined, malformed rows that reached the judgments table, and
the errors any reader or writer met (a store that stops opening shows there).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from figures import publish  # noqa: E402

from datastore.errors import StoreError  # noqa: E402
from datastore.records import (  # noqa: E402
    ImageRow,
    NewJudgment,
    NewPair,
    ensure_annotator,
    insert_images,
    insert_pairs,
    store_stats,
    upsert_prompts,
)
from datastore.store import Store  # noqa: E402

WRITERS, READERS = 8, 2
_BAD_FIELDS = ({"score_a": "high"}, {"is_gold": "no"}, {"external_id": 123}, {"confidence": float("nan")})


def writer(home: str, annotator: int, pairs: list[int], malformed: float, seed: int, log: str) -> None:
    """Judge ``pairs`` as ``annotator``; log ``ok``/``refused``/``raw`` lines after each acknowledgement."""
    store = Store.open(home)
    rng = random.Random(seed)
    with open(log, "a") as out:
        for pair in pairs:
            if rng.random() < malformed:
                if rng.random() < 0.5:
                    bad = NewJudgment(pair, annotator, "app", "a", **rng.choice(_BAD_FIELDS))
                    try:
                        store.record_judgment(bad)
                    except StoreError:
                        out.write(f"refused {pair} {annotator}\n")
                    else:
                        out.write(f"accepted-malformed {pair} {annotator}\n")
                else:
                    _append_raw(store, pair, annotator)
                    out.write(f"raw {pair} {annotator}\n")
            else:
                try:
                    store.record_judgment(NewJudgment(pair, annotator, "app", rng.choice("ab")))
                except Exception as e:  # noqa: BLE001 - every error counts in the report
                    out.write(f"error {type(e).__name__}: {e}\n".replace("\n", " ") + "\n")
                    continue
                out.write(f"ok {pair} {annotator}\n")
            out.flush()


def _append_raw(store: Store, pair: int, annotator: int) -> None:
    """An inbox row no check has seen (an older version, a hand edit): score_a is text."""
    con = sqlite3.connect(store.inbox.path, timeout=120)
    try:
        with con:
            con.execute(
                "INSERT INTO pending (pair_id, annotator_id, source, outcome, score_a, is_gold) VALUES (?, ?, ?, ?, ?, ?)",
                [pair, annotator, "app", "a", "high", 0],
            )
    finally:
        con.close()


def reader(home: str, log: str) -> None:
    """Read the stats in a loop; log every error (a store that stops opening)."""
    store = Store.open(home)
    with open(log, "a") as out:
        while True:
            try:
                with store.read() as con:
                    store_stats(con)
            except Exception as e:  # noqa: BLE001 - counted in the report
                out.write(f"error {type(e).__name__}: {e}\n".replace("\n", " ") + "\n")
                out.flush()
                time.sleep(0.1)


def _seed(home: Path, n_pairs: int, n_annotators: int) -> tuple[list[int], list[int]]:
    from PIL import Image

    store = Store.open(home)
    images = [store.media.put_image(Image.new("RGB", (8, 8), (i % 256, i // 256, 7))) for i in range(n_pairs + 1)]
    with store.write() as con:
        insert_images(con, [ImageRow(im) for im in images])
        prompt = upsert_prompts(con, ["a storm"])["a storm"]
        pairs = insert_pairs(con, [NewPair(prompt, a.id, b.id) for a, b in zip(images, images[1:], strict=False)])
        annotators = [ensure_annotator(con, f"storm-{i}") for i in range(n_annotators)]
    return pairs, annotators


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def storm(seconds: float, malformed: float, seed: int, workdir: Path) -> dict:
    home = workdir / "home"
    logs = workdir / "logs"
    logs.mkdir(parents=True)
    pairs, annotators = _seed(home, n_pairs=4000, n_annotators=2000)
    rng = random.Random(seed)
    next_annotator = iter(annotators)
    slots: dict[str, subprocess.Popen] = {}

    def start(slot: str) -> None:
        if slot.startswith("w"):
            ann = next(next_annotator)
            slots[slot] = _spawn(
                "writer", str(home), str(ann), json.dumps(pairs), str(malformed), str(rng.randrange(2**31)),
                str(logs / f"{slot}-{ann}.log"),
            )
        else:
            slots[slot] = _spawn("reader", str(home), str(logs / f"{slot}.log"))

    names = [f"w{i}" for i in range(WRITERS)] + [f"r{i}" for i in range(READERS)]
    for name in names:
        start(name)
    kills = {"writer": 0, "reader": 0}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(rng.uniform(0.3, 1.5))
        victim = rng.choice(names)
        slots[victim].send_signal(signal.SIGKILL)
        slots[victim].wait()
        kills["writer" if victim.startswith("w") else "reader"] += 1
        start(victim)
    for proc in slots.values():
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # Whole lines only: a writer killed mid-line leaves its last line without a newline.
    lines = [line.split(" ", 1) for f in sorted(logs.iterdir()) for line in f.read_text().split("\n")[:-1]]
    acked = {tuple(map(int, rest.split())) for kind, rest in lines if kind == "ok"}
    raw = {tuple(map(int, rest.split())) for kind, rest in lines if kind == "raw"}
    errors = [rest for kind, rest in lines if kind == "error"]
    reopen_error = None
    try:
        store = Store.open(home)
        with store.read() as con:
            stored = con.execute("SELECT pair_id, annotator_id FROM judgments").fetchall()
            quarantined = con.execute("SELECT count(*) FROM inbox_quarantine").fetchone()[0]
    except Exception as e:  # noqa: BLE001 - the figure this benchmark exists for
        reopen_error, stored, quarantined = f"{type(e).__name__}: {e}", [], None
    found = set(stored)
    return {
        "seconds": seconds,
        "malformed_share": malformed,
        "kills": kills,
        "acknowledged": len(acked),
        "found": len(acked & found),
        "lost": len(acked - found),
        "duplicated": len(stored) - len(found),
        "stored_unacknowledged": len(found - acked - raw),
        "refused": sum(kind == "refused" for kind, _ in lines),
        "accepted_malformed": sum(kind == "accepted-malformed" for kind, _ in lines),
        "raw_malformed_written": len(raw),
        "quarantined": quarantined,
        "malformed_in_judgments": len(found & raw),
        "errors": len(errors),
        "first_errors": errors[:3],
        "reopen_error": reopen_error,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        home, ann, pairs, malformed, seed, log = sys.argv[2:]
        writer(home, int(ann), json.loads(pairs), float(malformed), int(seed), log)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "reader":
        reader(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="How long the storm lasts.")
    parser.add_argument("--malformed", type=float, default=0.0, help="Share of malformed judgments.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="Also write the report here as JSON.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = storm(args.seconds, args.malformed, args.seed, Path(tmp))
    publish(report, args.out)


if __name__ == "__main__":
    main()
