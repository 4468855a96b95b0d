"""Regenerate the README's screenshots (docs/*.png) from the real app in chromium.

Run from the repository root (takes a few minutes on a CPU; not part of the test suite)::

    OMP_NUM_THREADS=1 .venv/bin/python docs/screenshots.py [--home /tmp/tour] [--pages rounds data]

A home that does not exist yet is built first with the real commands: ``workbench seed`` (the
shapes world), a small ``workbench demo`` (two closed rounds), and three simulated people
(``SimulatedAnnotator`` with different error rates) judging the same final pairs, so the Data
page has agreement to show. Then the app is served on 127.0.0.1, one short DPO job is launched
from the Train page, and each page is captured at 1400 x 900 (Rounds at 1400 x 2200, to hold its
timeline and before/after grid) into docs/ as a palette PNG.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, sync_playwright

from datastore.records import NewJudgment
from datastore.store import Store
from labeling.queue import human_annotator
from workbench.toy import SimulatedAnnotator

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
VIEWPORT = {"width": 1400, "height": 900}
ROUNDS_VIEWPORT = {"width": 1400, "height": 2200}  # timeline, charts and before/after grid in one picture
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
DEMO_ARGS = "--rounds 2 --prompts 24 --train-steps 40 --eval-prompts 8 --eval-seeds 1 --steps 10".split()
PEOPLE = {"ada": 0.05, "grace": 0.15, "alan": 0.3}  # name -> share of decisive answers flipped
PAIRS_PER_PERSON = 40
GRID_CAPTIONS = 3  # held-out captions in the Rounds page's before/after grid
TRAIN_FORM = {"max_steps": "60", "resolution": "32", "batch_size": "8", "learning_rate": "0.001"}
IDLE_JS = "() => !document.querySelector('[data-stale=\"true\"]') && !document.querySelector('[data-testid=\"stSpinner\"]')"
PAIR_JS = """() => {
    const imgs = [...document.querySelectorAll('#pair img')];
    return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""  # in the judging widget's frame
CHARTS_JS = """(n) => {
    const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
    return charts.filter(c => c.querySelector('canvas, svg')).length >= n;
}"""
FINISHED_JS = """() => [...document.querySelectorAll('code')].some(c => c.textContent === 'finished')"""


def workbench(home: Path, *args: str) -> None:
    """Run one `workbench` command on the home, failing loudly."""
    env = {**os.environ, "WORKBENCH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    subprocess.run([str(Path(sys.executable).parent / "workbench"), *args], env=env, check=True)


def simulated_people(store: Store) -> None:
    """Three people of known error rates judge the same final pairs (gold ones first), as from the app."""
    with store.read() as con:
        pairs = con.sql(
            "SELECT id, prompt, path_a, path_b, gold_outcome IS NOT NULL FROM pair_media WHERE kind = 'final' "
            "ORDER BY gold_outcome IS NULL, id LIMIT ?",
            params=[PAIRS_PER_PERSON],
        ).fetchall()
    for i, (name, error_rate) in enumerate(PEOPLE.items()):
        person = SimulatedAnnotator(error_rate=error_rate, seed=i)
        annotator_id = human_annotator(store, name)
        rng = random.Random(i)
        for pair_id, prompt, path_a, path_b, gold in pairs:
            shown = datetime.now(UTC)
            outcome = person.judge(store.media.open_image(path_a), store.media.open_image(path_b), prompt)
            store.record_judgment(
                NewJudgment(
                    pair_id=pair_id,
                    annotator_id=annotator_id,
                    source="app",
                    outcome=outcome,
                    left_image=rng.choice("ab"),
                    shown_at=shown,
                    answered_at=shown + timedelta(seconds=rng.uniform(1.5, 6.0)),
                    is_gold=gold,
                )
            )


def build_home(home: Path) -> None:
    """The shapes world, two demo rounds and some people's judgments, in a new home."""
    workbench(home, "seed")
    workbench(home, "demo", *DEMO_ARGS)
    simulated_people(Store.open(home))


@contextmanager
def app_server(home: Path) -> Iterator[str]:
    """The Streamlit app on 127.0.0.1 with WORKBENCH_HOME=home until the block ends; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.address", "127.0.0.1",
        "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip
    env = {**os.environ, "WORKBENCH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the app server did not start") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def save(page: Page, name: str, max_bytes: int = 300_000) -> None:
    """Capture the viewport as docs/<name>.png, quantized to a palette to stay small."""
    page.wait_for_function(IDLE_JS)
    page.wait_for_timeout(800)  # let charts finish their transitions
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    for colours in (256, 128, 64):
        buffer = io.BytesIO()
        image.quantize(colours, dither=Image.Dither.NONE).save(buffer, "PNG", optimize=True)
        if buffer.tell() <= max_bytes:
            break
    (DOCS / f"{name}.png").write_bytes(buffer.getvalue())
    print(f"docs/{name}.png: {buffer.tell() // 1024} KB")


def overview(page: Page, url: str) -> None:
    """The store's counts and charts."""
    page.goto(url)
    page.get_by_role("heading", name="Preference workbench").wait_for()
    page.wait_for_function(CHARTS_JS, arg=2)
    save(page, "overview")


def annotate(page: Page, url: str) -> None:
    """A pair on screen for a new annotator."""
    page.goto(f"{url}/annotate")
    name = page.get_by_label("Your name")
    name.fill("kim")
    name.press("Enter")
    page.wait_for_selector("iframe")
    next(f for f in page.frames if "/component/" in f.url).wait_for_function(PAIR_JS)
    save(page, "annotate")


def train(page: Page, url: str) -> None:
    """Launch one short DPO job from the form (a new one each run) and capture it finished."""
    page.goto(f"{url}/train")
    page.get_by_role("button", name="Launch").wait_for()
    for label, value in TRAIN_FORM.items():
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Enter")
        page.wait_for_function(IDLE_JS)
    page.get_by_role("button", name="Launch").click()
    page.wait_for_function(FINISHED_JS)
    page.get_by_text("Hyperparameters").click()  # fold the form so the job's charts are in view
    page.wait_for_function(CHARTS_JS, arg=3)
    page.get_by_role("heading", name="Jobs").scroll_into_view_if_needed()
    page.mouse.wheel(0, 250)
    save(page, "train")


def rounds(page: Page, url: str) -> None:
    """Timeline, win rates, a round's curves and the before/after grid, in one tall picture."""
    page.set_viewport_size(ROUNDS_VIEWPORT)
    page.goto(f"{url}/rounds")
    captions = page.get_by_label("Held-out captions")
    captions.fill(str(GRID_CAPTIONS))
    captions.press("Enter")
    page.wait_for_function(IDLE_JS)
    page.get_by_role("button", name="Draw the grid").click()
    page.get_by_text("(before)").nth(GRID_CAPTIONS - 1).wait_for()
    page.wait_for_function(CHARTS_JS, arg=3)
    save(page, "rounds")
    page.set_viewport_size(VIEWPORT)


def data(page: Page, url: str) -> None:
    """The agreement statistics of every judgment."""
    page.goto(f"{url}/data")
    page.get_by_role("heading", name="Agreement between annotators").wait_for()
    page.wait_for_function(CHARTS_JS, arg=1)
    save(page, "data")


PAGES = {"overview": overview, "annotate": annotate, "train": train, "rounds": rounds, "data": data}


def capture(url: str, names: list[str]) -> None:
    """Drive the named pages in chromium and save their screenshots."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(300_000)
        for name in names:
            PAGES[name](page, url)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/tour"), help="Home folder; built if missing.")
    parser.add_argument(
        "--pages", nargs="+", choices=list(PAGES), default=list(PAGES), help="Pages to capture."
    )
    args = parser.parse_args()
    if not (args.home / "workbench.duckdb").exists():
        build_home(args.home)
    with app_server(args.home) as url:
        capture(url, args.pages)


if __name__ == "__main__":
    main()
