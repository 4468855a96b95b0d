"""The Annotate page in a real browser: a Streamlit server on a temporary store, driven by chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from labeling_data import add_shapes_pairs
from playwright.sync_api import Page, sync_playwright

from datastore.store import Store

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# The id of the pair on screen, once the run is over (no stale element) and both images have loaded.
SHOWN_JS = """() => {
    if (document.querySelector('[data-stale="true"]')) return null;
    const code = document.querySelector('[data-testid="stCaptionContainer"] code');
    const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
    if (!code || imgs.length !== 2 || !imgs.every(i => i.complete && i.naturalWidth > 0)) return null;
    return code.textContent;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(command: list[str], home: Path, port: int) -> Iterator[str]:
    """Run a server command with WORKBENCH_HOME=home until it answers on the port; yield its URL."""
    proc = subprocess.Popen(
        command, env={**os.environ, "WORKBENCH_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start within 120 s"
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    store = Store.open(tmp_path / "home")
    add_shapes_pairs(store, 12)
    port = _free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]
    with serving(command, store.home, port) as url:
        yield url, store


def _shown(page: Page, before: str | None = None) -> str:
    """Wait until a pair other than ``before`` is fully on screen; return its SHOWN_JS value."""
    handle = page.wait_for_function(
        f"(before) => {{ const s = ({SHOWN_JS})(); return s && s !== before ? s : null; }}",
        arg=before,
    )
    return handle.json_value()


def test_annotate_ten_pairs_with_the_keyboard(server: tuple[str, Store]) -> None:
    url, store = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)  # a busy machine can take long to load the page
        page.goto(f"{url}/annotate")
        name = page.get_by_label("Your name")
        name.fill("kim")
        name.press("Enter")
        shown = _shown(page)
        pressed = []
        for i in range(10):
            key = "1234"[i % 4]
            pressed.append((int(shown), key))
            page.keyboard.press(key)
            shown = _shown(page, shown)
        assert "10 judged" in page.get_by_test_id("stProgress").inner_text()
        browser.close()
    with store.read() as con:
        rows = con.execute(
            "SELECT j.pair_id, j.outcome, j.left_image, j.source, epoch_ms(j.answered_at) - epoch_ms(j.shown_at) "
            "FROM judgments j JOIN annotators a ON a.id = j.annotator_id WHERE a.name = 'kim' ORDER BY j.id"
        ).fetchall()
    assert [r[0] for r in rows] == [pair_id for pair_id, _ in pressed]
    for (_, outcome, left, source, took_ms), (_, key) in zip(rows, pressed, strict=True):
        expected = {"1": left, "2": "b" if left == "a" else "a", "3": "tie", "4": "both_bad"}[key]
        assert (outcome, source) == (expected, "app")
        assert left in ("a", "b") and took_ms > 0


def test_workbench_app_serves_the_home_on_localhost(tmp_path: Path) -> None:
    home = tmp_path / "other-home"
    port = _free_port()
    workbench = Path(sys.executable).parent / "workbench"
    # WORKBENCH_HOME points elsewhere: --home is the home that gets opened.
    with serving([str(workbench), "--home", str(home), "app", "--port", str(port)], tmp_path / "env-home", port) as url:
        with urllib.request.urlopen(f"{url}/annotate", timeout=10) as response:
            assert response.status == 200
    assert (home / "workbench.duckdb").is_file()
