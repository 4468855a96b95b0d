"""Store benchmark: import rate, dataset-version export, statistics queries, write latency under load.

    .venv/bin/python benchmarks/store_bench.py --images 2000 --out benchmarks/out/store.json

Builds a synthetic store in a temporary folder: small PNG images, pairs over them and judgments
by 50 annotators. The import rate is measured on a Pick-a-Pic file through the real import path;
the rest of the store is filled with bulk SQL so the large-scale figures do not wait on it.

Write latency: 8 writer processes record single judgments through the judgment inbox
(``Store.record_judgment``) while another process runs the stats queries in a loop (its reads
apply the inbox), in a tight loop and at an annotator's pace. ``--direct`` also measures the old
path, one ``store.write()`` transaction per judgment, under the same load. Then the cost of
applying the inbox (rows/s) and the latency of a read that finds rows pending.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from figures import publish  # noqa: E402

from datastore.datasets import DatasetFilters, consensus_frame, create_dataset_version  # noqa: E402
from datastore.exports import export_dataset  # noqa: E402
from datastore.formats import import_pickapic  # noqa: E402
from datastore.records import NewJudgment, insert_judgments, store_stats  # noqa: E402
from datastore.store import Store  # noqa: E402


def _png(i: int) -> bytes:
    im = Image.new("RGB", (16, 16), (i % 251, (i // 251) % 251, (i // 63001) % 251))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_import(store: Store, rows: int, workdir: Path) -> dict:
    cols = {
        "caption": [f"import caption {i % 500}" for i in range(rows)],
        "jpg_0": [_png(10_000_000 + 2 * i) for i in range(rows)],
        "jpg_1": [_png(10_000_000 + 2 * i + 1) for i in range(rows)],
        "label_0": [1.0 if i % 3 == 0 else (0.5 if i % 3 == 1 else 0.0) for i in range(rows)],
        "label_1": [0.0 if i % 3 == 0 else (0.5 if i % 3 == 1 else 1.0) for i in range(rows)],
        "user_id": [i % 40 for i in range(rows)],
    }
    path = workdir / "import.parquet"
    pq.write_table(pa.table(cols), path)
    start = time.perf_counter()
    report = import_pickapic(store, path, show_progress=False)
    seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds, 1),
        "pairs": report.pairs,
    }


def fill(store: Store, n_images: int, n_pairs: int, n_judgments: int) -> dict:
    """Bulk-fill images, pairs and judgments with SQL (the import path is measured separately)."""
    start = time.perf_counter()
    records = [store.media.put_bytes(_png(i)) for i in range(n_images)]
    media_s = time.perf_counter() - start
    rng = random.Random(0)
    pairs = set()
    while len(pairs) < n_pairs:
        a, b = rng.randrange(n_images), rng.randrange(n_images)
        if a != b:
            pairs.add((a, b))
    pairs = sorted(pairs)
    images = pa.table(
        {
            "id": [r.id for r in records],
            "path": [r.path for r in records],
            "width": [16] * n_images,
            "height": [16] * n_images,
            "format": ["PNG"] * n_images,
            "nbytes": [r.nbytes for r in records],
        }
    )
    pair_table = pa.table(
        {
            "prompt_id": [1 + (i % 5000) for i in range(n_pairs)],
            "image_a": [records[a].id for a, _ in pairs],
            "image_b": [records[b].id for _, b in pairs],
            "kind": ["step" if i % 5 == 0 else "final" for i in range(n_pairs)],
            "timestep": [(i * 37) % 1000 if i % 5 == 0 else None for i in range(n_pairs)],
        }
    )
    outcomes = ["a", "b", "tie", "both_bad"]
    weights = [0.45, 0.4, 0.1, 0.05]
    judgment_table = pa.table(
        {
            "pair_id": [rng.randrange(n_pairs) + 1 for _ in range(n_judgments)],
            "annotator_id": [1 + rng.randrange(50) for _ in range(n_judgments)],
            "outcome": rng.choices(outcomes, weights, k=n_judgments),
            "left_image": [rng.choice("ab") for _ in range(n_judgments)],
        }
    )
    start = time.perf_counter()
    with store.write() as con:
        # A fresh store's sequences start at 1, so these rows get ids 1..n in insertion order.
        con.execute("INSERT INTO prompts (text) SELECT 'prompt ' || range FROM range(5000) ORDER BY range")
        con.execute(
            "INSERT INTO annotators (name, kind) SELECT 'person ' || range, 'human' FROM range(50) ORDER BY range"
        )
        con.register("new_images", images)
        con.execute("INSERT INTO images (id, path, width, height, format, nbytes) SELECT * FROM new_images")
        con.register("new_pairs", pair_table)
        con.execute("INSERT INTO pairs (prompt_id, image_a, image_b, kind, timestep) SELECT * FROM new_pairs")
        con.register("new_judgments", judgment_table)
        con.execute(
            "INSERT INTO judgments (pair_id, annotator_id, source, outcome, left_image, answered_at) "
            "SELECT pair_id, annotator_id, 'app', outcome, left_image, current_timestamp FROM new_judgments"
        )
    return {"media_files_s": round(media_s, 1), "bulk_sql_s": round(time.perf_counter() - start, 1)}


def _writer(home: str, annotator: int, pairs: list[int], pace_s: float, direct: bool, out: mp.Queue) -> None:
    """Record one judgment per pair; the first one (which fills the id caches) is reported apart."""
    store = Store.open(home)
    latencies = []
    rng = random.Random(annotator)
    for i, pair_id in enumerate(pairs):
        judgment = NewJudgment(pair_id, annotator, "app", "ab"[i % 2], left_image="a")
        start = time.perf_counter()
        if direct:
            with store.write() as con:
                insert_judgments(con, [judgment])
        else:
            store.record_judgment(judgment)
        latencies.append(time.perf_counter() - start)
        if pace_s:
            time.sleep(rng.uniform(0.5, 1.5) * pace_s)
    out.put(latencies)


def _stats_reader(home: str, stop, out: mp.Queue) -> None:
    """Run the stats queries in a loop until ``stop`` is set; report each read's latency."""
    store = Store.open(home)
    latencies = []
    while not stop.is_set():
        start = time.perf_counter()
        with store.read() as con:
            store_stats(con)
        latencies.append(time.perf_counter() - start)
    out.put(latencies)


def _summary(latencies: list[float]) -> dict:
    return {
        "n": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * _percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies), 1),
    }


def bench_writers(
    store: Store, writers: int, per_writer: int, pace_s: float, *, first_pair: int, direct: bool
) -> dict:
    """8 writer processes (annotators 1..8, pairs from ``first_pair``) and one stats reader."""
    ctx = mp.get_context("spawn")
    queue, reader_out, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    pairs = list(range(first_pair, first_pair + per_writer))
    procs = [
        ctx.Process(target=_writer, args=(str(store.home), w + 1, pairs, pace_s, direct, queue))
        for w in range(writers)
    ]
    reader = ctx.Process(target=_stats_reader, args=(str(store.home), stop, reader_out))
    reader.start()
    load = os.getloadavg()[0]
    start = time.perf_counter()
    for p in procs:
        p.start()
    runs = [queue.get() for _ in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    stop.set()
    reads = reader_out.get()
    reader.join()
    latencies = [x for run in runs for x in run[1:]]
    return {
        "path": "direct write()" if direct else "inbox",
        "writers": writers,
        "pace_s": pace_s,
        "load_avg_1min_at_start": round(load, 2),
        "write": _summary(latencies),
        "first_write_per_process_ms": sorted(round(1000 * run[0], 1) for run in runs),
        "writes_per_s": round(writers * per_writer / wall, 1),
        "stats_reader": _summary(reads),
    }


def bench_drain(store: Store, rows: int, annotator: int) -> dict:
    """Append ``rows`` judgments to the inbox in one process, then time the read that applies them."""
    start = time.perf_counter()
    for pair_id in range(1, rows + 1):
        store.record_judgment(NewJudgment(pair_id, annotator, "app", "a"))
    append_s = time.perf_counter() - start
    start = time.perf_counter()
    with store.read() as con:
        con.execute("SELECT 1").fetchall()
    drain_s = time.perf_counter() - start
    return {
        "rows": rows,
        "append_per_s_one_process": round(rows / append_s, 1),
        "read_that_applies_them_s": round(drain_s, 3),
        "drain_rows_per_s": round(rows / drain_s, 1),
    }


def bench_pending_reads(store: Store, annotator: int, repeats: int) -> dict:
    """Latency of a stats read with 0, 1, 8 or 64 judgments pending in the inbox."""
    out = {}
    pair_id = 1
    for pending in (0, 1, 8, 64):
        latencies = []
        for _ in range(repeats):
            for _ in range(pending):
                store.record_judgment(NewJudgment(pair_id, annotator, "app", "b"))
                pair_id += 1
            start = time.perf_counter()
            with store.read() as con:
                store_stats(con)
            latencies.append(time.perf_counter() - start)
        out[f"pending_{pending}"] = _summary(latencies)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300_000)
    parser.add_argument("--judgments", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--import-rows", type=int, default=5_000)
    parser.add_argument("--writes-per-writer", type=int, default=200)
    parser.add_argument("--drain-rows", type=int, default=5_000)
    parser.add_argument("--direct", action="store_true", help="also measure one write() per judgment")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    results: dict = {"config": vars(args) | {"out": str(args.out)}, "load_avg_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "home")
        results["fill"] = fill(store, args.images, args.pairs, args.judgments)
        results["import"] = bench_import(store, args.import_rows, Path(tmp))
        with store.read() as con:
            start = time.perf_counter()
            stats = store_stats(con)
            results["stats_query_s"] = round(time.perf_counter() - start, 3)
        results["store"] = {"judgments": stats["judgments"], "pairs": stats["pairs"]}
        start = time.perf_counter()
        frame = consensus_frame(store, DatasetFilters(min_judgments=2, min_agreement=0.6))
        results["curation_query_s"] = round(time.perf_counter() - start, 2)
        results["curated_pairs"] = frame.height
        start = time.perf_counter()
        version = create_dataset_version(store, "bench")
        results["dataset_version_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        export_dataset(version, "pickapic", Path(tmp) / "export", show_progress=False)
        results["export_pickapic_s"] = round(time.perf_counter() - start, 1)
        results["export_pairs"] = version.n_pairs
        per_writer = args.writes_per_writer
        results["inbox_writers_saturated"] = bench_writers(
            store, 8, per_writer, 0.0, first_pair=1, direct=False
        )
        results["inbox_writers_paced_1s"] = bench_writers(
            store, 8, per_writer // 4, 1.0, first_pair=1 + per_writer, direct=False
        )
        if args.direct:
            results["direct_writers_saturated"] = bench_writers(
                store, 8, per_writer, 0.0, first_pair=1, direct=True
            )
            results["direct_writers_paced_1s"] = bench_writers(
                store, 8, per_writer // 4, 1.0, first_pair=1, direct=True
            )
        results["drain"] = bench_drain(store, args.drain_rows, annotator=50)
        results["reads_with_pending"] = bench_pending_reads(store, annotator=49, repeats=20)
    text = json.dumps(results, indent=2)
    publish(text, args.out)


if __name__ == "__main__":
    main()
