"""Annotation benchmark: the queue on a large store, the Annotate page in a real browser, scorer throughput.

    .venv/bin/python benchmarks/annotate_bench.py --pairs 100000 --presses 60 --out benchmarks/out/annotate.json

Builds a store in a temporary folder: shapes-world images (shared among pairs), 100,000 pairs
bulk-inserted with SQL (one in 50 gold), and judgments by 50 people on a third of them. Then:

- queue: ``next_pairs`` (one pair, and a browser's batch of 5, leased) and ``record_answers``
  (one answer through the inbox) latency through the library (one process);
- browser: ``workbench app`` serves the store and chromium (playwright) judges on the Annotate
  page's widget. First one session presses 1-4 ``--presses`` times with no pause (the next press
  as soon as a pair is on screen), then ``--sessions`` sessions annotate at once for
  ``--session-seconds``. Key press to next pair painted is the widget's own performance measure
  (the key event's time to the frame after the swap); every press is checked in the store
  (once, against the pair on screen, with its side); the server's CPU time per judgment is read
  from /proc;
- scorers: images per second of the shapes oracle and of a tiny CLIP on the CPU, and pairs per
  second of ``label_with_scorer`` with the oracle (store reads and writes included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tiny_clip import build_tiny_clip_model, build_tiny_clip_processor  # noqa: E402

from datastore.store import Store  # noqa: E402
from labeling.ai_feedback import label_with_scorer  # noqa: E402
from labeling.answers import Answer, now, record_answers  # noqa: E402
from labeling.queue import QueueConfig, human_annotator, next_pairs  # noqa: E402
from reward_models.clip import ClipScorer  # noqa: E402
from reward_models.shapes import ShapesOracle, all_captions, render  # noqa: E402

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "n": len(values),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def fill(store: Store, n_pairs: int, n_images: int, n_judged: int) -> dict:
    """Bulk-fill prompts, images, pairs and judgments with SQL; images are shared among pairs."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    captions = all_captions()
    records = [store.media.put_image(render(captions[i % len(captions)], 32, rng)) for i in range(n_images)]
    # Pair (i, j) over the images: distinct ordered pairs, as the store's UNIQUE (image_a, image_b) asks.
    picks = random.Random(0).sample(range(n_images * n_images), n_pairs + n_images)
    pairs = [(k // n_images, k % n_images) for k in picks if k // n_images != k % n_images][:n_pairs]
    images = pa.table({"id": [r.id for r in records], "path": [r.path for r in records]})
    pair_table = pa.table({
        "prompt_id": [1 + a % len(captions) for a, _ in pairs],
        "image_a": [records[a].id for a, _ in pairs],
        "image_b": [records[b].id for _, b in pairs],
        "gold_outcome": ["a" if i % 50 == 0 else None for i in range(len(pairs))],
    })
    with store.write() as con:
        con.register("new_prompts", pa.table({"text": list(captions)}))
        con.execute("INSERT INTO prompts (text) SELECT text FROM new_prompts")
        con.execute("INSERT INTO annotators (name, kind) SELECT 'person ' || range, 'human' FROM range(50) ORDER BY range")
        con.register("new_images", images)
        con.execute("INSERT INTO images (id, path, width, height, format, nbytes) SELECT id, path, 32, 32, 'PNG', 0 FROM new_images")
        con.register("new_pairs", pair_table)
        con.execute("INSERT INTO pairs (prompt_id, image_a, image_b, kind, gold_outcome) "
                    "SELECT prompt_id, image_a, image_b, 'final', gold_outcome FROM new_pairs")
        # A fresh store numbers pairs 1..n and annotators 1..50 in insertion order.
        con.execute(
            "INSERT INTO judgments (pair_id, annotator_id, source, outcome, left_image, shown_at, answered_at) "
            "SELECT 1 + range % $n, 1 + (range // $n + 2 * (range % $n)) % 50, 'app', 'a', 'a', "
            "current_timestamp, current_timestamp FROM range(2 * $n)",
            {"n": n_judged},
        )
    return {"pairs": len(pairs), "images": n_images, "judgments": 2 * n_judged,
            "fill_s": round(time.perf_counter() - start, 1)}


def bench_queue(store: Store, answers: int) -> dict:
    """Library latencies: one pair leased, one answer through the inbox, a browser's batch of 5 leased."""
    annotator = human_annotator(store, "bench queue")
    config = QueueConfig()
    fetch, write, batch = [], [], []
    for _ in range(answers):
        start = time.perf_counter()
        [item], _ = next_pairs(store, annotator, 1, config=config)
        fetch.append(time.perf_counter() - start)
        answer = Answer(None, item.pair_id, "left", item.left_image, item.gold_outcome is not None, item.shown_at, now())
        start = time.perf_counter()
        record_answers(store, annotator, [answer])
        write.append(time.perf_counter() - start)
    for _ in range(answers // 5):
        start = time.perf_counter()
        next_pairs(store, annotator, 5, config=config)
        batch.append(time.perf_counter() - start)
    return {
        "next_pairs_1": _percentiles(fetch),
        "record_answers_1": _percentiles(write),
        "next_pairs_5": _percentiles(batch),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the app did not answer on port {port} within {timeout_s} s")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serving(home: Path) -> Iterator[tuple[str, int]]:
    """``workbench app`` on the store; yields its URL and process id."""
    port = _free_port()
    workbench = Path(sys.executable).parent / "workbench"
    proc = subprocess.Popen([str(workbench), "app", "--port", str(port)], env={**os.environ, "WORKBENCH_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# In the widget's frame: the pair on screen once its images have loaded (null while none is).
_ON_SCREEN = """() => {
    const id = document.getElementById('root').dataset.pair;
    const imgs = [...document.querySelectorAll('#pair img')];
    return id && imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0) ? Number(id) : null;
}"""
_SAVED = "() => document.getElementById('status').dataset.state === 'saved'"
_MEASURES = """() => performance.getEntriesByType('measure')
    .filter(m => m.name.startsWith('judge-next-')).map(m => m.duration)"""


async def _open(browser, url: str, name: str):
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(180_000)
    await page.goto(f"{url}/annotate?annotator={name}")
    await page.wait_for_selector("iframe")
    frame = next(f for f in page.frames if "/component/" in f.url)
    await frame.wait_for_function(_ON_SCREEN)
    return page, frame


async def _annotate(page, frame, *, presses: int | None, until: float | None, think_s: float) -> dict:
    """Press 1-4 as soon as a pair is on screen (plus ``think_s``), ``presses`` times or until ``until``."""
    stalls, stalled_s, i = 0, 0.0, 0
    while (presses is None or i < presses) and (until is None or time.monotonic() < until):
        if await frame.evaluate(_ON_SCREEN) is None:  # the browser's queue ran dry: wait for pairs
            stalls += 1
            start = time.monotonic()
            await frame.wait_for_function(_ON_SCREEN, polling="raf")
            stalled_s += time.monotonic() - start
        await page.keyboard.press("1234"[i % 4])
        i += 1
        if think_s:
            await asyncio.sleep(think_s)
    await frame.wait_for_function(_SAVED)
    return {
        "presses": i,
        "log": await frame.evaluate("() => window.judgeLog"),
        "ignored": await frame.evaluate("() => window.judgeIgnored"),
        "measures_ms": await frame.evaluate(_MEASURES),
        "stalls": stalls,
        "stalled_s": round(stalled_s, 2),
    }


def _outcome(entry: dict, left: str) -> str:
    return {"left": left, "right": "b" if left == "a" else "a"}.get(entry["side"], entry["side"])


def _check_stored(store: Store, name: str, log: list[dict]) -> dict:
    """Each press of the log in the store once, against the pair that was on screen, with its side."""
    with store.read() as con:
        rows = con.execute(
            "SELECT j.idempotency_key, j.pair_id, j.outcome, j.left_image FROM judgments j "
            "JOIN annotators a ON a.id = j.annotator_id WHERE a.name = ?",
            [name],
        ).fetchall()
    by_key = {key: (pair, outcome, left) for key, pair, outcome, left in rows}
    right = sum(1 for e in log if e["key"] in by_key and by_key[e["key"]][:2] == (e["pair"], _outcome(e, by_key[e["key"]][2])))
    pairs = [pair for pair, _, _ in by_key.values()]
    return {"stored": len(rows), "right_pair_and_side": right, "duplicate_pairs": len(pairs) - len(set(pairs))}


def _ms(values: list[float]) -> dict:
    return _percentiles([v / 1000 for v in values])


def bench_browser(
    store: Store, presses: int, sessions: int, session_s: float, think_s: float, screenshot: Path | None
) -> dict:
    """One session pressing ``presses`` times without pause, then ``sessions`` at once for ``session_s``."""
    from playwright.async_api import async_playwright

    async def run() -> dict:
        results = {}
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            with serving(store.home) as (url, pid):
                page, frame = await _open(browser, url, "bench burst")
                cpu = _cpu_s(pid)
                burst = await _annotate(page, frame, presses=presses, until=None, think_s=0.0)
                cpu = _cpu_s(pid) - cpu
                results["burst"] = {
                    "press_to_painted": _ms(burst["measures_ms"]),
                    "server_cpu_ms_per_judgment": round(1000 * cpu / max(1, len(burst["log"])), 1),
                    **{k: burst[k] for k in ("presses", "ignored", "stalls", "stalled_s")},
                    **_check_stored(store, "bench burst", burst["log"]),
                }
                if screenshot is not None:
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(path=str(screenshot))
                await page.close()
                opened = [await _open(browser, url, f"bench session {k}") for k in range(sessions)]
                cpu, start = _cpu_s(pid), time.monotonic()
                done = await asyncio.gather(
                    *(_annotate(pg, fr, presses=None, until=start + session_s, think_s=think_s) for pg, fr in opened)
                )
                seconds, cpu = time.monotonic() - start, _cpu_s(pid) - cpu
                checks = [_check_stored(store, f"bench session {k}", d["log"]) for k, d in enumerate(done)]
                judged = sum(len(d["log"]) for d in done)
                results["sessions"] = {
                    "sessions": sessions,
                    "seconds": round(seconds, 1),
                    "think_s": think_s,
                    "presses": sum(d["presses"] for d in done),
                    "judgments_logged": judged,
                    "stored": sum(c["stored"] for c in checks),
                    "right_pair_and_side": sum(c["right_pair_and_side"] for c in checks),
                    "duplicate_pairs_per_annotator": sum(c["duplicate_pairs"] for c in checks),
                    "ignored": sum(d["ignored"] for d in done),
                    "stalls": sum(d["stalls"] for d in done),
                    "press_to_painted": _ms([m for d in done for m in d["measures_ms"]]),
                    "server_cpu_ms_per_judgment": round(1000 * cpu / max(1, judged), 1),
                }
            await browser.close()
        return results

    return asyncio.run(run())


def bench_scorers(n_images: int) -> dict:
    rng = np.random.default_rng(1)
    captions = list(all_captions())
    prompts = [captions[i % len(captions)] for i in range(n_images)]
    images = [render(c, 32, rng) for c in prompts]
    results = {}
    tiny = ClipScorer(build_tiny_clip_model(len(build_tiny_clip_processor().tokenizer)),
                      build_tiny_clip_processor(), "clip", "tiny", batch_size=64)
    for name, scorer in (("shapes-oracle", ShapesOracle()), ("tiny-clip", tiny)):
        scorer.score(images[:8], prompts[:8])  # warm-up
        start = time.perf_counter()
        scorer.score(images, prompts)
        seconds = time.perf_counter() - start
        results[name] = {"images": n_images, "seconds": round(seconds, 2), "images_per_s": round(n_images / seconds, 1)}
    return results


def bench_ai_labeling(store: Store, limit: int) -> dict:
    start = time.perf_counter()
    report = label_with_scorer(store, ShapesOracle(), kinds=("final",), limit=limit)
    seconds = time.perf_counter() - start
    return {"pairs": report.judged, "seconds": round(seconds, 2), "pairs_per_s": round(report.judged / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--judged", type=int, default=33_000, help="pairs that get two judgments each")
    parser.add_argument("--answers", type=int, default=100, help="queue answers through the library")
    parser.add_argument("--presses", type=int, default=200, help="key presses without pause in one browser session")
    parser.add_argument("--sessions", type=int, default=8, help="browser sessions annotating at once")
    parser.add_argument("--session-seconds", type=float, default=120.0, help="how long the sessions annotate")
    parser.add_argument("--think", type=float, default=0.25, help="seconds between a session's presses")
    parser.add_argument("--scorer-images", type=int, default=1024)
    parser.add_argument("--ai-pairs", type=int, default=2000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["queue", "browser", "ai", "scorers"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--screenshot", type=Path, help="save the Annotate page after the presses (PNG)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "home")
        results["store"] = fill(store, args.pairs, args.images, args.judged)
        print("store", results["store"], flush=True)
        if "queue" not in args.skip:
            results["queue"] = bench_queue(store, args.answers)
            print("queue", results["queue"], flush=True)
        if "browser" not in args.skip:
            results["browser"] = bench_browser(
                store, args.presses, args.sessions, args.session_seconds, args.think, args.screenshot
            )
            print("browser", json.dumps(results["browser"]), flush=True)
        if "ai" not in args.skip:
            results["ai_labeling"] = bench_ai_labeling(store, args.ai_pairs)
            print("ai_labeling", results["ai_labeling"], flush=True)
    if "scorers" not in args.skip:
        results["scorers"] = bench_scorers(args.scorer_images)
        print("scorers", results["scorers"], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
