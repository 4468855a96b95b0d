"""The judging widget in a real browser: a Streamlit server on a temporary store, driven by chromium."""

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
from playwright.sync_api import Browser, BrowserContext, Frame, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from datastore.store import Store
from workbench.cli.label import streamlit_command

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
KEYS = {"1": "left", "2": "right", "3": "tie", "4": "both_bad"}


def free_port() -> int:
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


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_widget(
    browser: Browser | BrowserContext, url: str, name: str, page_path: str = "annotate"
) -> tuple[Page, Frame]:
    """A new page (in a new browser session, or in the given one) on a judging page as ``name``;
    returns once a pair is on screen."""
    page = browser.new_page()
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)  # a busy machine can take long to load the page
    page.goto(f"{url}/{page_path}?annotator={name}")
    page.wait_for_selector("iframe")
    frame = _widget_frame(page)
    wait_for_pair(frame)
    return page, frame


def _widget_frame(page: Page) -> Frame:
    """The widget's frame once its page has one that is attached and rendered."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "/component/" in frame.url and not frame.is_detached():
                try:
                    frame.wait_for_function("() => window.judgeLog !== undefined", timeout=5_000)
                    return frame
                except PlaywrightError:  # detached while waiting: look again
                    continue
        time.sleep(0.2)
    raise AssertionError("no judging widget on the page within 120 s")


def wait_for_pair(frame: Frame) -> int:
    """The pair on screen once there is one and its images have loaded."""
    return frame.wait_for_function(
        """() => {
            const id = document.getElementById('root').dataset.pair;
            const imgs = [...document.querySelectorAll('#pair img')];
            return id && imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0) ? Number(id) : null;
        }"""
    ).json_value()


def wait_saved(frame: Frame) -> None:
    """Until the widget's outbox is empty: every answer acknowledged by the server."""
    frame.wait_for_function("() => document.getElementById('status').dataset.state === 'saved'")


def judge_log(frame: Frame) -> list[dict]:
    return frame.evaluate("() => window.judgeLog")


def stored(store: Store, name: str) -> list[tuple]:
    """(pair, outcome, left image, withdrawn, key) of the annotator's judgments, in the order stored."""
    with store.read() as con:
        return con.execute(
            "SELECT j.pair_id, j.outcome, j.left_image, j.withdrawn, j.idempotency_key "
            "FROM judgments j JOIN annotators a ON a.id = j.annotator_id WHERE a.name = ? ORDER BY j.id",
            [name],
        ).fetchall()


def expected_outcome(side: str, left: str) -> str:
    return {"left": left, "right": "b" if left == "a" else "a"}.get(side, side)


def assert_log_stored(store: Store, name: str, log: list[dict]) -> None:
    """Every answer of the widget's log is in the store exactly once, with its pair and side;
    the undone ones withdrawn, nothing else."""
    undone = {entry["undo"] for entry in log if "undo" in entry}
    answers = [entry for entry in log if "side" in entry]
    rows = stored(store, name)
    by_key = {row[4]: row for row in rows}
    assert len(by_key) == len(rows) == len(answers)
    for entry in answers:
        pair, outcome, left, withdrawn, _ = by_key[entry["key"]]
        assert (pair, outcome, withdrawn) == (entry["pair"], expected_outcome(entry["side"], left), entry["key"] in undone)


def write_config(home: Path, **values: object) -> None:
    (home / "labeling.toml").write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


# In the widget's frame, read in one go: null while a pair is on screen, else what shows instead.
NO_PAIR = """() => {
    const root = document.getElementById('root');
    return root.dataset.pair ? null : {
        state: root.dataset.state, shown: !document.getElementById('empty').hidden,
        text: document.getElementById('empty-text').textContent,
    };
}"""
LOADING = {"state": "loading", "shown": True, "text": "Loading the next pairs…"}


def test_back_to_back_presses_are_each_stored_once_against_the_pair_on_screen(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 40, gold_every=5)
    write_config(home, gold_rate=0.2)  # the default prefetch (5): the queue is refilled as it goes
    port = free_port()
    with serving(streamlit_command("127.0.0.1", port), home, port) as url, chromium() as browser:
        page, frame = open_widget(browser, url, "kim")
        keys = "1234" * 9
        on_screen = []
        for key in keys:  # each press as soon as the page shows a pair, no sleep
            waiting = frame.evaluate(NO_PAIR)
            assert waiting in (None, LOADING)  # a queue run dry says so
            on_screen.append(wait_for_pair(frame))
            page.keyboard.press(key)
        wait_saved(frame)
        log = judge_log(frame)
        ignored = frame.evaluate("() => window.judgeIgnored")
        assert frame.evaluate("() => document.getElementById('progress-text').textContent").startswith("36 judged")
    assert ignored == 0 and len(set(on_screen)) == 36
    rows = stored(store, "kim")
    # Stored in the order pressed, each against the pair the page showed, with the side pressed.
    pressed = zip(on_screen, keys, rows, strict=True)
    assert [row[:2] for row in rows] == [(pair, expected_outcome(KEYS[key], row[2])) for pair, key, row in pressed]
    assert [e["pair"] for e in log] == on_screen
    assert_log_stored(store, "kim", log)
    with store.read() as con:
        times = con.execute("SELECT count(*) FILTER (WHERE answered_at > shown_at), count(*) FROM judgments").fetchall()
        gold = con.execute(
            "SELECT count(*) FILTER (WHERE j.is_gold = (p.gold_outcome IS NOT NULL)), count(*) "
            "FROM judgments j JOIN pairs p ON p.id = j.pair_id"
        ).fetchall()
    assert times == [(36, 36)] and gold == [(36, 36)]


def test_a_press_with_no_pair_on_screen_is_not_recorded_and_says_so(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 1)
    port = free_port()
    with serving(streamlit_command("127.0.0.1", port), home, port) as url, chromium() as browser:
        page, frame = open_widget(browser, url, "noa")
        pair = wait_for_pair(frame)
        page.keyboard.press("1")
        wait_saved(frame)
        frame.wait_for_function("() => document.getElementById('root').dataset.state === 'done'")
        page.keyboard.press("2")  # nothing left: not kept for a pair that may come later
        notice = frame.wait_for_function(
            "() => { const n = document.getElementById('notice'); return !n.hidden && n.textContent; }"
        ).json_value()
        ignored = frame.evaluate("() => window.judgeIgnored")
        outbox = frame.evaluate("() => document.getElementById('status').dataset.state")
    assert notice.startswith("Not recorded") and ignored == 1 and outbox == "saved"
    assert [row[0] for row in stored(store, "noa")] == [pair]


def test_undo_takes_back_the_last_judgment_and_shows_its_pair_again(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 6)
    port = free_port()
    with serving(streamlit_command("127.0.0.1", port), home, port) as url, chromium() as browser:
        page, frame = open_widget(browser, url, "una")
        first = wait_for_pair(frame)
        page.keyboard.press("1")
        second = wait_for_pair(frame)
        page.keyboard.press("2")
        third = wait_for_pair(frame)
        page.keyboard.press("Backspace")
        assert wait_for_pair(frame) == second
        page.keyboard.press("3")
        assert wait_for_pair(frame) == third
        page.keyboard.press("u")
        page.keyboard.press("u")
        assert wait_for_pair(frame) == first
        page.keyboard.press("4")
        wait_saved(frame)
        log = judge_log(frame)
        # ? shows and hides the shortcuts; z zooms while held, a click on an image until the next.
        hidden = "() => document.getElementById('help').hidden"
        page.keyboard.press("?")
        assert frame.evaluate(hidden) is False
        page.keyboard.press("?")
        assert frame.evaluate(hidden) is True
        zoomed = "() => document.getElementById('root').classList.contains('zoom')"
        page.keyboard.down("z")
        assert frame.evaluate(zoomed) is True
        page.keyboard.up("z")
        assert frame.evaluate(zoomed) is False
        # A click on an image zooms too, and a second click ends it.
        image = frame.locator("#side-left img").first
        image.click()
        assert frame.evaluate(zoomed) is True
        image.click()
        assert frame.evaluate(zoomed) is False
    assert_log_stored(store, "una", log)
    live = sorted((pair, outcome) for pair, outcome, _, withdrawn, _ in stored(store, "una") if not withdrawn)
    assert live == sorted([(first, "both_bad")])
    assert len(stored(store, "una")) == 4  # left, right (undone), tie (undone), both bad


def test_a_server_restart_mid_session_loses_and_duplicates_nothing(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 20)
    write_config(home, prefetch=8)
    port = free_port()
    with chromium() as browser:
        with serving(streamlit_command("127.0.0.1", port), home, port) as url:
            page, frame = open_widget(browser, url, "ray")
            for key in "1234":
                page.keyboard.press(key)
                wait_for_pair(frame)
            wait_saved(frame)
        # The server is gone: the pairs already in the browser can still be judged.
        for key in "213":
            page.keyboard.press(key)
            wait_for_pair(frame)
        frame.wait_for_function("() => document.getElementById('status').dataset.state === 'offline'")
        assert len(stored(store, "ray")) == 4
        log = judge_log(frame)
        with serving(streamlit_command("127.0.0.1", port), home, port):
            # The page reconnects by itself; its widget frame may be a new one, whose unsent
            # answers come from the browser's storage.
            page.wait_for_function("() => document.querySelector('iframe') !== null")
            frame = _widget_frame(page)
            wait_saved(frame)
            page.keyboard.press("4")
            wait_saved(frame)
            log += [e for e in judge_log(frame) if e not in log]
    assert len([e for e in log if "side" in e]) == 8
    assert_log_stored(store, "ray", log)


def test_answers_left_unsent_in_a_closed_page_are_sent_by_the_next_one(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 10)
    port = free_port()
    with chromium() as browser:
        context = browser.new_context()  # one browser profile: the pages share local storage
        with serving(streamlit_command("127.0.0.1", port), home, port) as url:
            page, frame = open_widget(context, url, "lea")
        for key in "12":  # the server is gone
            page.keyboard.press(key)
            wait_for_pair(frame)
        log = judge_log(frame)
        page.close()  # closed with two answers unsent
        assert stored(store, "lea") == []
        with serving(streamlit_command("127.0.0.1", port), home, port) as url:
            _, frame = open_widget(context, url, "lea")
            wait_saved(frame)
            shown = wait_for_pair(frame)
    assert len(log) == 2 and shown not in {e["pair"] for e in log}
    assert_log_stored(store, "lea", log)


def test_two_sessions_on_the_last_pairs_never_exceed_the_overlap(home: Path) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 5)
    write_config(home, overlap=1, gold_rate=0.0, prefetch=4)
    port = free_port()
    with serving(streamlit_command("127.0.0.1", port), home, port) as url, chromium() as browser:
        sessions = [open_widget(browser, url, name) for name in ("amy", "ben")]
        # Both press as fast as pairs come until neither has one left.
        while True:
            on_screen = [frame.evaluate("() => document.getElementById('root').dataset.pair") for _, frame in sessions]
            if not any(on_screen):
                break
            for (page, _), pair in zip(sessions, on_screen, strict=True):
                if pair:
                    page.keyboard.press("1")
            for _, frame in sessions:
                wait_saved(frame)
        for _, frame in sessions:
            frame.wait_for_function(
                "() => document.getElementById('empty-text').textContent.startsWith('Nothing left')"
            )
    with store.read() as con:
        counts = con.execute("SELECT pair_id, count(*) FROM judgments GROUP BY pair_id").fetchall()
    assert len(counts) == 5 and all(n == 1 for _, n in counts)
    assert len(stored(store, "amy")) + len(stored(store, "ben")) == 5


def test_workbench_app_serves_the_home_on_localhost(tmp_path: Path) -> None:
    home = tmp_path / "other-home"
    port = free_port()
    workbench = Path(sys.executable).parent / "workbench"
    # WORKBENCH_HOME points elsewhere: --home is the home that gets opened.
    with serving([str(workbench), "--home", str(home), "app", "--port", str(port)], tmp_path / "env-home", port) as url:
        with urllib.request.urlopen(f"{url}/annotate", timeout=10) as response:
            assert response.status == 200
    assert (home / "workbench.duckdb").is_file()
