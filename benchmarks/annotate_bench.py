"""Annotation benchmark: the queue on a large store, the Annotate page in a real browser, scorer throughput.

    .venv/bin/python benchmarks/annotate_bench.py --pairs 100000 --presses 60 --out benchmarks/out/annotate.json

Builds a store in a temporary folder: shapes-world images (shared among pairs), 100,000 pairs
bulk-inserted with SQL (one in 50 gold), and judgments by 50 people on a third of them. Then:

- queue: ``next_pair`` and ``record_answer`` latency through the library (one process);
- browser: ``workbench app`` serves the store, chromium (playwright) enters a name and answers
  pairs with the keys 1-4; the figure is the time from a key press to the next pair's images
  being on screen;
- scorers: images per second of the shapes oracle and of a tiny CLIP on the CPU, and pairs per
  second of ``label_with_scorer`` with the oracle (store reads and writes included).
"""

from __future__ import annotations

import argparse
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
from labeling.queue import QueueConfig, answer_and_next, human_annotator, next_pair, record_answer  # noqa: E402
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
    annotator = human_annotator(store, "bench queue")
    config = QueueConfig()
    fetch, write, both = [], [], []
    for _ in range(answers):
        start = time.perf_counter()
        item, _ = next_pair(store, annotator, config=config)
        fetch.append(time.perf_counter() - start)
        start = time.perf_counter()
        record_answer(store, item, annotator, "left")
        write.append(time.perf_counter() - start)
    item, _ = next_pair(store, annotator, config=config)
    for _ in range(answers):
        start = time.perf_counter()
        item, _ = answer_and_next(store, item, annotator, "right", config=config)
        both.append(time.perf_counter() - start)
    return {"next_pair": _percentiles(fetch), "record_answer": _percentiles(write), "answer_and_next": _percentiles(both)}


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


# The id of the pair on screen, once the run is over and both images have loaded: what the annotator sees.
_SHOWN_JS = """() => {
    if (document.querySelector('[data-stale="true"]')) return null;
    const code = document.querySelector('[data-testid="stCaptionContainer"] code');
    const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
    if (!code || imgs.length !== 2 || !imgs.every(i => i.complete && i.naturalWidth > 0)) return null;
    return code.textContent;
}"""


def bench_browser(home: Path, presses: int, screenshot: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(home)}
    workbench = Path(sys.executable).parent / "workbench"
    proc = subprocess.Popen([str(workbench), "app", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(port, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/annotate")
            name = page.get_by_label("Your name")
            name.fill("bench browser")
            name.press("Enter")
            page.wait_for_function(_SHOWN_JS, timeout=60_000)
            latencies = []
            for i in range(presses):
                before = page.evaluate(_SHOWN_JS)
                start = time.perf_counter()
                page.keyboard.press("1234"[i % 4])
                page.wait_for_function(f"(before) => {{ const s = ({_SHOWN_JS})(); return s && s !== before; }}",
                                       arg=before, polling="raf", timeout=60_000)
                latencies.append(time.perf_counter() - start)
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return _percentiles(latencies)


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
    parser.add_argument("--presses", type=int, default=60, help="key presses in the browser")
    parser.add_argument("--scorer-images", type=int, default=1024)
    parser.add_argument("--ai-pairs", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--screenshot", type=Path, help="save the Annotate page after the presses (PNG)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "home")
        results["store"] = fill(store, args.pairs, args.images, args.judged)
        print("store", results["store"], flush=True)
        results["queue"] = bench_queue(store, args.answers)
        print("queue", results["queue"], flush=True)
        results["browser"] = bench_browser(store.home, args.presses, args.screenshot)
        print("browser", results["browser"], flush=True)
        results["ai_labeling"] = bench_ai_labeling(store, args.ai_pairs)
        print("ai_labeling", results["ai_labeling"], flush=True)
    results["scorers"] = bench_scorers(args.scorer_images)
    print("scorers", results["scorers"], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
