"""Label Studio benchmark: push and pull of many tasks against a real local server.

    .venv/bin/python benchmarks/labelstudio_bench.py --pairs 10000 --out benchmarks/out/labelstudio.json

Builds a temporary store (drawn PNGs, pairs over them, one AI judgment per pair), starts a
server from .venv-labelstudio with an empty data folder, then times:
- push: every pair as a task, with the AI judgment as a suggestion (prediction);
- annotate (setup, not the sync): Label Studio's own "predictions to annotations" action turns
  every suggestion into an annotation in one request, as a reviewer accepting them all would;
- pull: every annotation merged as a new judgment; then a second pull that finds nothing new;
  then the export request alone (the part of a pull spent waiting on the server).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

from label_studio_sdk import LabelStudio
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from figures import publish  # noqa: E402

from datastore.records import (  # noqa: E402
    ImageRow,
    NewJudgment,
    NewPair,
    ensure_annotator,
    insert_images,
    insert_judgments,
    insert_pairs,
    upsert_prompts,
)
from datastore.store import Store  # noqa: E402
from labeling.labelstudio.client import LabelStudioClient  # noqa: E402
from labeling.labelstudio.server import Credentials, LabelStudioServer  # noqa: E402
from labeling.labelstudio.sync import pull, push  # noqa: E402


def _png(i: int) -> bytes:
    im = Image.new("RGB", (16, 16), (i % 256, i // 256, 77))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def fill(store: Store, n_pairs: int, n_images: int) -> list[int]:
    """Images, prompts, pairs and one AI judgment per pair (the suggestions)."""
    records = [store.media.put_bytes(_png(i), sync=False) for i in range(n_images)]
    os.sync()
    rng = random.Random(0)
    combos: set[tuple[int, int]] = set()
    while len(combos) < n_pairs:
        a, b = rng.sample(range(n_images), 2)
        combos.add((a, b))
    with store.write() as con:
        prompts = upsert_prompts(con, [f"benchmark prompt {k}" for k in range(500)])
        insert_images(con, [ImageRow(r) for r in records])
        pair_ids = insert_pairs(con, [
            NewPair(prompts[f"benchmark prompt {k % 500}"], records[a].id, records[b].id)
            for k, (a, b) in enumerate(sorted(combos))
        ])
        agent = ensure_annotator(con, "bench-scorer@1", kind="ai", model="bench-scorer", version="1")
        scores = [(rng.random(), rng.random()) for _ in pair_ids]
        insert_judgments(con, [
            NewJudgment(pair_id=p, annotator_id=agent, source="ai", outcome="a" if sa > sb else "b",
                        score_a=sa, score_b=sb)
            for p, (sa, sb) in zip(pair_ids, scores, strict=True)
        ])
    return pair_ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None, help="Write the figures here as JSON.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "home")
        _, fill_s = _timed(lambda: fill(store, args.pairs, args.images))
        credentials = Credentials("bench@example.com", secrets.token_urlsafe(12), secrets.token_hex(20), "benchmark")
        server = LabelStudioServer(store.home, credentials, port=_free_port(), data_dir=Path(tmp) / "ls-data")
        _, start_s = _timed(server.start)
        try:
            client = LabelStudioClient(server.url, credentials.token)
            pushed, push_s = _timed(lambda: push(store, client, suggestions_from="bench-scorer@1"))
            tasks, list_s = _timed(lambda: client.list_tasks(pushed.project_id))
            sdk = LabelStudio(base_url=server.url, api_key=credentials.token, timeout=900)
            _, annotate_s = _timed(lambda: sdk.actions.create(
                id="predictions_to_annotations", project=pushed.project_id, selected_items={"all": True, "excluded": []}
            ))
            first, pull_s = _timed(lambda: pull(store, client))
            second, repull_s = _timed(lambda: pull(store, client))
            exported, export_s = _timed(lambda: client.annotated_tasks(pushed.project_id))
        finally:
            server.stop()

    assert pushed.pushed == args.pairs and len(tasks) == args.pairs, (pushed, len(tasks))
    assert first.new == args.pairs and second.unchanged == args.pairs, (first, second)
    assert len(exported) == args.pairs
    figures = {
        "pairs": args.pairs,
        "store_fill_s": fill_s,
        "server_first_start_s": start_s,
        "push_s": push_s,
        "push_tasks_per_s": round(args.pairs / push_s, 1),
        "list_tasks_s": list_s,
        "annotate_setup_s": annotate_s,
        "pull_new_s": pull_s,
        "pull_new_per_s": round(args.pairs / pull_s, 1),
        "pull_unchanged_s": repull_s,
        "of_which_export_s": export_s,
    }
    text = json.dumps(figures, indent=2)
    publish(text, args.out)


if __name__ == "__main__":
    main()
