"""What a careless or hostile user types or imports: refused with a named error, or stored and
readable; never a store that stops opening."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pickapic_data import drawn_image, pickapic_rows, write_parquet
from PIL import Image
from test_store_concurrency import ROOT, _seed_pairs
from typer.testing import CliRunner

from datastore.errors import DuplicateJudgmentError, ImportFormatError, StoreError
from datastore.formats import import_pickapic
from datastore.media import inspect_image
from datastore.records import NewJudgment, ensure_annotator
from datastore.sql import scalar
from datastore.store import Store, StoreConfig
from workbench.cli import app

runner = CliRunner()


def _annotator(store: Store, name: str = "ada") -> int:
    with store.write() as con:
        return ensure_annotator(con, name)


def _judgment_count(store: Store) -> int:
    with store.read() as con:
        return scalar(con, "SELECT count(*) FROM judgments")


# 1. Judgments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("score_a", "high"),
        ("external_id", 123),
        ("external_updated_at", 5),
        ("is_gold", "no"),
        ("confidence", float("nan")),
        ("score_b", float("inf")),
        ("pair_id", 2**70),
        ("shown_at", "yesterday"),
        ("external_id", "x" * 1001),
        ("external_id", "\ud800"),
    ],
)
def test_a_malformed_judgment_is_refused_naming_its_field_and_the_store_keeps_opening(
    store: Store, field: str, value
) -> None:
    [pair] = _seed_pairs(store, 1)
    ann = _annotator(store)
    fields = {"pair_id": pair, "annotator_id": ann, "source": "app", "outcome": "a", field: value}
    with pytest.raises(StoreError, match=field):
        store.record_judgment(NewJudgment(**fields))
    assert store.inbox.pending() == []
    store.record_judgment(NewJudgment(pair, ann, "app", "b", is_gold=True))
    assert _judgment_count(store) == 1
    with store.read() as con:
        assert con.execute("SELECT outcome, is_gold FROM judgments").fetchall() == [("b", True)]


def _append_raw(store: Store, **values) -> None:
    """Write an inbox row as an older version or a hand edit would, without any check."""
    con = sqlite3.connect(store.inbox.path)
    with con:
        columns = ", ".join(values)
        con.execute(f"INSERT INTO pending ({columns}) VALUES ({', '.join('?' * len(values))})", list(values.values()))
        con.execute("INSERT INTO answered (pair_id, annotator_id) VALUES (?, ?)", [values["pair_id"], values["annotator_id"]])
    con.close()


def test_an_inbox_row_that_cannot_be_applied_is_quarantined_and_stats_report_it(store: Store) -> None:
    pairs = _seed_pairs(store, 3)
    ann = _annotator(store)
    store.record_judgment(NewJudgment(pairs[0], ann, "app", "a"))
    _append_raw(store, pair_id=pairs[1], annotator_id=ann, source="app", outcome="a", score_a="high", is_gold=0)
    _append_raw(store, pair_id=pairs[2], annotator_id=ann, source="app", outcome="b", is_gold="no")
    _append_raw(store, pair_id=pairs[2] + 100, annotator_id=ann, source="app", outcome="a", is_gold=0)
    _append_raw(store, pair_id=pairs[0], annotator_id=ann + 100, source="app", outcome="a", is_gold=0)
    store.record_judgment(NewJudgment(pairs[2], _annotator(store, "bob"), "app", "tie"))
    # Every process keeps reading and writing; the good judgments on both sides are applied.
    assert _judgment_count(store) == 2
    assert _judgment_count(Store.open(store.home)) == 2
    assert store.inbox.pending() == []
    with store.read() as con:
        quarantined = con.execute("SELECT fields, error FROM inbox_quarantine ORDER BY inbox_row").fetchall()
    assert [json.loads(f)["score_a"] for f, _ in quarantined] == ["high", None, None, None]
    assert "score_a must be a finite number" in quarantined[0][1]
    assert "is_gold must be True or False, got 'no'" in quarantined[1][1]
    assert quarantined[2][1] == f"judgment of pair {pairs[2] + 100}: pair {pairs[2] + 100} does not exist"
    assert quarantined[3][1] == f"judgment of pair {pairs[0]}: annotator {ann + 100} does not exist"
    with store.read() as con:  # no judgment points at a pair or annotator that is not there
        assert scalar(con, "SELECT count(*) FROM judgments WHERE pair_id NOT IN (SELECT id FROM pairs)") == 0
        assert scalar(con, "SELECT count(*) FROM judgments WHERE annotator_id NOT IN (SELECT id FROM annotators)") == 0
    result = runner.invoke(app, ["--home", str(store.home), "stats", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert (counts["judgments"], counts["quarantined_judgments"]) == (2, 4)
    # A quarantined answer does not count as given: its annotator may answer the pair again.
    store.record_judgment(NewJudgment(pairs[1], ann, "app", "b", score_a=0.5))
    assert _judgment_count(store) == 3


_TEXT = st.one_of(st.none(), st.text(max_size=30), st.integers(), st.booleans(), st.floats())
_NUMBER = st.one_of(st.none(), st.floats(), st.integers(-(2**70), 2**70), st.text(max_size=5), st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.fixed_dictionaries(
        {
            "source": st.one_of(st.sampled_from(["app", "ai", "labelstudio", "import", "web"]), _TEXT),
            "outcome": st.one_of(st.sampled_from(["a", "b", "tie", "both_bad", "left"]), _TEXT),
            "left_image": st.one_of(st.sampled_from(["a", "b"]), _TEXT),
            "confidence": _NUMBER,
            "score_a": _NUMBER,
            "score_b": _NUMBER,
            "shown_at": st.one_of(st.none(), st.datetimes(), _TEXT),
            "answered_at": st.one_of(st.none(), st.datetimes(), st.integers()),
            "is_gold": st.one_of(st.booleans(), _TEXT),
            "external_id": _TEXT,
            "external_updated_at": _TEXT,
        }
    ),
    pair_offset=st.sampled_from([0, 0, 0, 1, -1000]),
)
def test_fuzz_record_judgment_is_refused_by_name_or_applied_and_readable(
    tmp_path_factory: pytest.TempPathFactory, data: dict, pair_offset: int
) -> None:
    store, pair = _fuzz_store(tmp_path_factory)
    # A fresh annotator per example, so that no example is another's duplicate.
    judgment = NewJudgment(pair + pair_offset, _annotator(store, f"fuzz-{len(_FUZZ['seen'])}"), **data)
    _FUZZ["seen"].append(judgment)
    try:
        store.record_judgment(judgment)
    except StoreError as e:
        assert not isinstance(e, DuplicateJudgmentError)
        named = [f.name for f in dataclasses.fields(NewJudgment)] + ["pair", "annotator"]
        assert any(name in str(e) for name in named), f"the refusal names no field: {e}"
        accepted = False
    else:
        accepted = True
        _FUZZ["accepted"] += 1
    with store.read() as con:  # opening never fails, whatever was offered
        assert scalar(con, "SELECT count(*) FROM inbox_quarantine") == 0
        assert scalar(con, "SELECT count(*) FROM judgments") == _FUZZ["accepted"]
        if accepted:
            row = con.execute(
                "SELECT outcome, source, is_gold, external_id FROM judgments ORDER BY id DESC LIMIT 1"
            ).fetchone()
            assert row == (judgment.outcome, judgment.source, judgment.is_gold, judgment.external_id)


_FUZZ: dict = {"seen": [], "accepted": 0}


def _fuzz_store(factory: pytest.TempPathFactory) -> tuple[Store, int]:
    """One store shared by every example of the fuzz test, with one pair."""
    if "store" not in _FUZZ:
        store = Store.open(factory.mktemp("fuzz") / "home")
        _FUZZ["store"], _FUZZ["pair"] = store, _seed_pairs(store, 1)[0]
    return _FUZZ["store"], _FUZZ["pair"]


def test_numpy_scalars_from_a_frame_are_accepted_as_numbers(store: Store) -> None:
    [pair] = _seed_pairs(store, 1)
    ann = _annotator(store)
    store.record_judgment(
        NewJudgment(np.int64(pair), np.int64(ann), "ai", "a", score_a=np.float32(0.25), score_b=1, is_gold=np.bool_(False),
                    answered_at=datetime(2026, 1, 2, 3, 4, 5))
    )
    with store.read() as con:
        assert con.execute("SELECT score_a, score_b, is_gold FROM judgments").fetchall() == [(0.25, 1.0, False)]


# 4. Names ----------------------------------------------------------------------------------------


def test_names_with_a_trailing_newline_are_refused_and_make_no_folder(tmp_path: Path, pickapic_file: Path) -> None:
    home = tmp_path / "home"
    assert runner.invoke(app, ["--home", str(home), "import", "pickapic", str(pickapic_file)]).exit_code == 0
    result = runner.invoke(app, ["--home", str(home), "dataset", "create", "nl\n"])
    assert result.exit_code == 1
    assert "dataset name 'nl\\n' must be letters" in result.output
    assert list((home / "datasets").iterdir()) == []
    result = runner.invoke(app, ["--home", str(home), "curation", "save", "nl\n"])
    assert result.exit_code == 1
    assert "curation name: dataset name 'nl\\n'" in result.output
    assert "nl" not in runner.invoke(app, ["--home", str(home), "curation", "list"]).output
    from workbench.access import AccessError, _check_name

    with pytest.raises(AccessError, match="user name"):
        _check_name("ada\n")


@pytest.mark.parametrize(("column", "row"), [("image_0_uid", 2), ("image_1_uid", 0), ("ranking_id", 3)])
def test_an_image_uid_or_ranking_id_ending_in_a_newline_is_refused_naming_row_and_column(
    store: Store, tmp_path: Path, column: str, row: int
) -> None:
    cols = pickapic_rows(4)
    cols[column] = [str(v) for v in cols[column]]
    cols[column][row] += "\n"
    before = _store_state(store)
    with pytest.raises(ImportFormatError, match=re.escape(f"row {row}, column '{column}': {cols[column][row]!r} is not")):
        import_pickapic(store, write_parquet(tmp_path / "nl.parquet", cols), show_progress=False)
    assert _store_state(store) == before


# 8. Two processes resuming one round -----------------------------------------------------------


def test_a_second_resume_of_a_round_that_is_running_is_refused(store: Store, tmp_path: Path) -> None:
    from workbench.rounds.driver import resume_round
    from workbench.rounds.errors import RoundError

    with store.write() as con:
        round_id = scalar(con, "INSERT INTO rounds (status, config, results) VALUES ('failed', '{}', '{}') RETURNING id")
    ready, release = tmp_path / "ready", tmp_path / "release"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_ROUND, str(store.home), str(round_id), str(ready), str(release)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        while not ready.exists():
            assert holder.poll() is None
            time.sleep(0.01)
        with pytest.raises(RoundError, match=f"round {round_id} is already running in another process"):
            resume_round(store, round_id)
        result = runner.invoke(app, ["--home", str(store.home), "round", "resume", str(round_id)])
        assert result.exit_code == 1
        assert "already running in another process" in result.output
        with store.read() as con:
            assert scalar(con, "SELECT status FROM rounds WHERE id = ?", [round_id]) == "failed"
    finally:
        release.touch()
        holder.wait(timeout=30)
    assert holder.returncode == 0


_HOLD_ROUND = """
import sys, time
from pathlib import Path
from datastore.store import Store, StoreConfig
from workbench.rounds.driver import round_lock
home, round_id, ready, release = sys.argv[1:]
with round_lock(Store.open(home), int(round_id)):
    Path(ready).touch()
    while not Path(release).exists():
        time.sleep(0.01)
"""


# 6. Secrets ------------------------------------------------------------------------------------


def test_a_labelstudio_credentials_file_readable_by_others_is_refused_and_left_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labeling.errors import LabelingError
    from labeling.labelstudio.server import api_token, load_credentials

    for env in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        monkeypatch.delenv(env, raising=False)
    path = tmp_path / "config" / "labelstudio.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"username": "me@example.com", "token": "t" * 20}))
    path.chmod(0o644)
    for read in (lambda: load_credentials(path, create=True), lambda: load_credentials(path), lambda: api_token(path)):
        with pytest.raises(LabelingError, match=r"may be read by others \(mode 644\): run `chmod 600"):
            read()
    assert json.loads(path.read_text()) == {"username": "me@example.com", "token": "t" * 20}
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    made = load_credentials(path, create=True)
    assert (made.username, made.token) == ("me@example.com", "t" * 20)
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["password"] == made.password


# 2. A removed admin's open Train page ------------------------------------------------------------


def test_a_removed_admin_loses_the_train_pages_job_panel_without_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import sync_playwright
    from test_annotate_browser import CHROMIUM_ARGS, free_port, serving

    from workbench.access import add_user, remove_user
    from workbench.cli.label import streamlit_command

    store = Store.open(tmp_path / "home")
    users = store.home / "users.toml"
    add_user(store, users, "ada", "admin", "ada's password")
    add_user(store, users, "bob", "admin", "bob's password")  # with no user left, nobody need sign in
    monkeypatch.setenv("WORKBENCH_REQUIRE_SIGN_IN", "1")
    monkeypatch.delenv("WORKBENCH_USERS_FILE", raising=False)
    port = free_port()
    with serving(streamlit_command("127.0.0.1", port), store.home, port) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.set_default_timeout(120_000)
        page.goto(url)
        page.get_by_role("textbox", name="Name").fill("ada")
        page.get_by_role("textbox", name="Password").fill("ada's password")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="Train").click()
        page.get_by_text("No jobs yet.").wait_for()
        remove_user(users, "ada")
        # The panel polls every 2 s; its next run must refuse, with no click and no reload.
        page.get_by_text("This page is for admins.").wait_for()
        assert page.get_by_text("No jobs yet.").count() == 0
        browser.close()


# 7. Sign-in --------------------------------------------------------------------------------------


def test_sign_in_failures_are_limited_per_name_and_per_client(store: Store, tmp_path: Path) -> None:
    from workbench.access import SignInError, SignInLimiter, SignInLimitError, SignInLimits, add_user, verify

    users = tmp_path / "users" / "users.toml"
    add_user(store, users, "ada", "admin", "ada's password")
    add_user(store, users, "bob", "annotator", "bob's password")
    now = [0.0]
    limiter = SignInLimiter(SignInLimits(per_name=3, per_client=5, window_s=60.0), clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(SignInError):
            verify(users, "ada", "guess", client="10.0.0.1", limiter=limiter)
    # Locked for the name, from any client, even with the right password; other names still work.
    with pytest.raises(SignInLimitError, match="try again in 60 s"):
        verify(users, "ada", "ada's password", client="10.0.0.2", limiter=limiter)
    assert verify(users, "bob", "bob's password", client="10.0.0.2", limiter=limiter).name == "bob"
    for name in ("carol", "dave"):
        with pytest.raises(SignInError):
            verify(users, name, "guess", client="10.0.0.1", limiter=limiter)
    # Five failures from 10.0.0.1: that client is locked for every name.
    with pytest.raises(SignInLimitError):
        verify(users, "bob", "bob's password", client="10.0.0.1", limiter=limiter)
    now[0] = 60.5  # the window has passed
    assert verify(users, "ada", "ada's password", client="10.0.0.1", limiter=limiter).name == "ada"


def test_a_password_in_another_unicode_form_signs_in(store: Store, tmp_path: Path) -> None:
    import unicodedata

    from workbench.access import SignInLimiter, add_user, verify

    users = tmp_path / "users" / "users.toml"
    password = "café crème ２０２６"  # composed accents, full-width digits
    add_user(store, users, "ada", "admin", unicodedata.normalize("NFC", password))
    for form in ("NFD", "NFKC", "NFKD"):
        typed = unicodedata.normalize(form, password)
        assert verify(users, "ada", typed, limiter=SignInLimiter()).name == "ada", form


def test_user_list_refuses_a_users_file_inside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inside = ROOT / "users-in-checkout.toml"
    inside.write_text("[users]\n")
    inside.chmod(0o600)
    try:
        monkeypatch.setenv("WORKBENCH_USERS_FILE", str(inside))
        result = runner.invoke(app, ["--home", str(tmp_path / "home"), "user", "list"])
    finally:
        inside.unlink()
    assert result.exit_code == 1
    assert "is inside the source checkout" in result.output


# 9. Any terminal width, any path length --------------------------------------------------------


def test_list_commands_and_the_demo_under_a_long_home_path_at_60_columns(tmp_path: Path, pickapic_file: Path) -> None:
    home = tmp_path / ("h" * (150 - len(str(tmp_path)) - 1))
    assert len(str(home)) == 150

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "workbench"), "--home", str(home), *args],
            env={**os.environ, "COLUMNS": "60", "WORKBENCH_PASSWORD": "a long password"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("import", "pickapic", str(pickapic_file))
    cli("dataset", "create", "prefs")
    cli("user", "add", "ada", "--role", "admin")
    [version] = json.loads(cli("dataset", "list", "--json"))
    assert (version["name"], version["n_pairs"]) == ("prefs", 12)
    assert json.loads(cli("user", "list", "--json"))[0]["name"] == "ada"
    assert json.loads(cli("stats", "--json"))["pairs"] == 12
    # The text forms never break a value over lines, whatever the width.
    assert any(version["id"] in line for line in cli("dataset", "list").splitlines())
    assert any("ada" in line and "admin" in line for line in cli("user", "list").splitlines())
    cli("curation", "save", "people", "--min-judgments", "2")
    [saved] = json.loads(cli("curation", "list", "--json"))
    assert (saved["name"], saved["filters"]["min_judgments"]) == ("people", 2)
    assert any("min_judgments=2" in line for line in cli("curation", "list").splitlines())
    assert json.loads(cli("jobs", "list", "--json")) == []
    tiny = ["--prompts", "2", "--train-steps", "1", "--eval-prompts", "2", "--eval-seeds", "1", "--steps", "2"]
    demo = json.loads(cli("demo", "--rounds", "1", *tiny, "--json"))
    assert demo["home"] == str(home) and [r["round"] for r in demo["rounds"]] == [1]
    assert [(r["round"], r["status"]) for r in json.loads(cli("round", "list", "--json"))] == [(1, "finished")]
    text = cli("round", "list")
    assert any(line.strip().endswith("1 -> 2") for line in text.splitlines()), text


# 3. Pick-a-Pic import ----------------------------------------------------------------------------


def _png(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A 1-bit greyscale PNG of zeros (or with the given IDAT payload), built chunk by chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    if idat is None:
        row = b"\x00" * (1 + (width + 7) // 8)
        compressor = zlib.compressobj(9)
        idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.txt", "hidden")
    return buf.getvalue()


def _animated_webp() -> bytes:
    frames = [Image.new("RGB", (16, 16), (i * 60, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _webp(*chunks: tuple[bytes, bytes], raw: bytes = b"") -> bytes:
    """A still lossy WEBP with the given (kind, body) chunks, then ``raw``, inside its RIFF size."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="WEBP")
    body = buf.getvalue()[12:]
    for kind, data in chunks:
        body += kind + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)
    body += raw
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def _bad_idat_crc(png: bytes) -> bytes:
    at = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[at - 4 : at])
    crc_at = at + 4 + length
    return png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1 :]


_IMAGE_CASES = {
    "bomb": (lambda png: _png(20_000, 20_000), "20000 x 20000 pixels exceeds the limit of 16777216 pixels"),
    "header_bomb": (lambda png: _png(60_000, 60_000, idat=b"x"), "60000 x 60000 pixels exceeds the limit"),
    "large": (lambda png: _png(12_000, 12_000), "12000 x 12000 pixels exceeds the limit"),
    "no_iend": (lambda png: png[:-12], "truncated PNG|not a readable image"),
    "no_crc": (lambda png: png[:-4], "truncated PNG"),
    "bad_idat_crc": (_bad_idat_crc, "corrupt PNG \\(bad CRC in chunk b'IDAT'\\)"),
    "zip_appended": (lambda png: png + _zip(), "126 bytes after the PNG's IEND chunk"),
    "animated_webp": (lambda png: _animated_webp(), "an animated image \\(3 frames\\)"),
    "jpeg_zip": (lambda png: drawn_image(99, fmt="JPEG") + _zip(), "126 bytes after the JPEG's end-of-image marker"),
    "jpeg_zip_ffd9": (
        lambda png: drawn_image(99, fmt="JPEG") + _zip() + b"\xff\xd9", "128 bytes after the JPEG's end-of-image marker"
    ),
    "webp_zip_inside_riff": (lambda png: _webp(raw=_zip()), re.escape("a chunk b'PK\\x03\\x04' at byte")),
    "webp_zip_chunk": (lambda png: _webp((b"ZIPF", _zip())), "a chunk b'ZIPF' at byte \\d+, which the WEBP format"),
    "webp_simple_then_exif": (lambda png: _webp((b"EXIF", _zip())), re.escape("a simple WEBP (chunk b'VP8 ')")),
}


def _store_state(store: Store) -> tuple:
    with store.read() as con:
        counts = tuple(scalar(con, f"SELECT count(*) FROM {t}") for t in ("prompts", "images", "pairs", "judgments"))
    return counts, sorted(p.name for p in store.media.root.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", list(_IMAGE_CASES))
def test_pickapic_images_that_are_not_one_whole_still_image_are_refused(store: Store, tmp_path: Path, case: str) -> None:
    cols = pickapic_rows(6)
    make, message = _IMAGE_CASES[case]
    cols["jpg_1"][4] = make(drawn_image(1000))
    before = _store_state(store)
    with pytest.raises(ImportFormatError, match=f"row 4, column 'jpg_1': ({message})"):
        import_pickapic(store, write_parquet(tmp_path / "bad.parquet", cols), show_progress=False)
    assert _store_state(store) == before


_EXIF = Image.Exif()
_EXIF[0x010F] = "a camera maker"  # Make

_PIL_IMAGES = {
    "jpeg": ("RGB", {"format": "JPEG"}),
    "jpeg_progressive": ("RGB", {"format": "JPEG", "progressive": True, "quality": 100}),
    "jpeg_optimized_444": ("RGB", {"format": "JPEG", "optimize": True, "subsampling": 0}),
    "jpeg_exif": ("RGB", {"format": "JPEG", "exif": _EXIF}),
    "jpeg_restart_markers": ("RGB", {"format": "JPEG", "restart_marker_blocks": 1}),
    "jpeg_icc_comment": ("RGB", {"format": "JPEG", "icc_profile": bytes(300), "comment": b"hello"}),
    "jpeg_grey_progressive": ("L", {"format": "JPEG", "progressive": True}),
    "jpeg_cmyk": ("CMYK", {"format": "JPEG"}),
    "webp": ("RGB", {"format": "WEBP"}),
    "webp_lossless": ("RGB", {"format": "WEBP", "lossless": True}),
    "webp_alpha": ("RGBA", {"format": "WEBP"}),
    "webp_exif_icc": ("RGB", {"format": "WEBP", "exif": _EXIF, "icc_profile": bytes(301)}),
    "png_alpha": ("RGBA", {"format": "PNG"}),
}


@pytest.mark.parametrize("case", list(_PIL_IMAGES))
def test_whole_images_as_pil_writes_them_are_accepted(case: str) -> None:
    mode, options = _PIL_IMAGES[case]
    # Noise: the JPEG scans hold many stuffed 0xFF bytes, the WEBP an alpha chunk.
    pixels = np.random.default_rng(7).integers(0, 256, (61, 70, len(mode)), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(2) if mode == "L" else pixels, mode).save(buf, **options)
    record = inspect_image(buf.getvalue(), max_bytes=1 << 20)
    assert (record.format, record.width, record.height) == (options["format"], 70, 61)


def test_a_pixel_limit_above_pils_own_is_named_not_silently_capped(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home", StoreConfig(max_image_pixels=400_000_000))
    cols = pickapic_rows(6)
    cols["jpg_1"][4] = _png(15_000, 15_000)
    before = _store_state(store)
    with pytest.raises(ImportFormatError, match=re.escape(
        "row 4, column 'jpg_1': 15000 x 15000 pixels exceeds PIL's own limit of 178956970 pixels, "
        "which the limit of 400000000 does not lift"
    )):  # fmt: skip
        import_pickapic(store, write_parquet(tmp_path / "big.parquet", cols), show_progress=False)
    assert _store_state(store) == before


def test_the_pixel_limit_is_configurable(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home", StoreConfig(max_image_pixels=31 * 32))
    cols = pickapic_rows(2)  # 32 x 32 images
    with pytest.raises(ImportFormatError, match="row 0, column 'jpg_0': 32 x 32 pixels exceeds the limit of 992"):
        import_pickapic(store, write_parquet(tmp_path / "f.parquet", cols), show_progress=False)
    path = write_parquet(tmp_path / "f.parquet", cols)
    result = runner.invoke(app, ["--home", str(tmp_path / "cli"), "import", "pickapic", str(path), "--max-pixels", "992"])
    assert result.exit_code == 1 and "32 x 32 pixels exceeds the limit of 992 pixels" in result.output
    result = runner.invoke(app, ["--home", str(tmp_path / "cli"), "import", "pickapic", str(path), "--max-pixels", "1024"])
    assert result.exit_code == 0 and "2 new judgments" in result.output


def test_pickapic_rows_that_break_a_rule_are_named_and_change_nothing(store: Store, tmp_path: Path) -> None:
    def same_images(cols):
        cols["jpg_1"][3] = cols["jpg_0"][3]

    def long_caption(cols):
        cols["caption"][2] = "a" * 1_000_000

    def long_user(cols):
        cols["user_id"] = [str(u) for u in cols["user_id"]]
        cols["user_id"][5] = "u" * 100_000

    def contradiction(cols):
        for key in cols:
            cols[key].append(cols[key][1])
        cols["label_0"][-1], cols["label_1"][-1] = cols["label_1"][1], cols["label_0"][1]

    def swapped_contradiction(cols):  # row 1's images in the other order, the other image preferred
        for key in cols:
            cols[key].append(cols[key][1])
        cols["jpg_0"][-1], cols["jpg_1"][-1] = cols["jpg_1"][1], cols["jpg_0"][1]
        cols["ranking_id"][-1] = 5000

    cases = {
        "row 3, column 'jpg_1': the same image as jpg_0": same_images,
        "row 6, column 'label_0': contradicts row 1: the same user judged the same two images": swapped_contradiction,
        "row 2, column 'caption': caption has 1000000 characters, more than 10000": long_caption,
        "row 5, column 'user_id': must be at most 256 printable characters, got 100000": long_user,
        "row 6, column 'ranking_id': ranking id '1001' is also row 1": contradiction,
    }
    before = _store_state(store)
    for message, mutate in cases.items():
        cols = pickapic_rows(6)
        mutate(cols)
        with pytest.raises(ImportFormatError, match=re.escape(message)):
            import_pickapic(store, write_parquet(tmp_path / "bad.parquet", cols), show_progress=False)
        assert _store_state(store) == before, message


def test_duplicated_pickapic_rows_are_stored_once(store: Store, tmp_path: Path) -> None:
    cols = pickapic_rows(6)
    for key in cols:
        cols[key] += [cols[key][1], cols[key][2]]  # same ranking ids, images and labels
    cols["ranking_id"][-1] = 5000  # another ranking id, same user, images and labels
    cols["user_id"] = [str(u) for u in cols["user_id"]]
    for ranking, user in ((5001, "1"), (5002, "zoe")):  # row 1 swapped: by its user, then by another
        for key in cols:
            cols[key].append(_swapped(cols, 1)[key])
        cols["ranking_id"][-1], cols["user_id"][-1] = ranking, user
    report = import_pickapic(store, write_parquet(tmp_path / "dup.parquet", cols), show_progress=False)
    assert (report.rows, report.duplicates, report.pairs, report.judgments) == (10, 3, 6, 7)
    with store.read() as con:
        assert scalar(con, "SELECT count(*) FROM judgments") == 7
        # zoe's judgment is of row 1's pair, her labels turned to its order: she prefers its image b too.
        assert con.execute(
            "SELECT a.name, j.outcome FROM judgments j JOIN annotators a ON a.id = j.annotator_id "
            "WHERE j.pair_id = (SELECT pair_id FROM judgments WHERE external_id = '1001') ORDER BY j.id"
        ).fetchall() == [("pickapic:1", "b"), ("pickapic:zoe", "b")]


def _swapped(cols: dict, i: int) -> dict:
    """Row ``i`` with its two images (and their uids, models and labels) in the other order: the same judgment."""
    row = {key: values[i] for key, values in cols.items()}
    for left, right in (("jpg_0", "jpg_1"), ("image_0_uid", "image_1_uid"), ("model_0", "model_1"), ("label_0", "label_1")):
        row[left], row[right] = row[right], row[left]
    return row


def _one_file(path: Path, *rows: dict) -> Path:
    return write_parquet(path, {key: [r[key] for r in rows] for key in rows[0]})


def test_a_later_import_skips_repeats_of_an_earlier_one_and_refuses_contradictions(store: Store, tmp_path: Path) -> None:
    cols = pickapic_rows(6)  # row i: pair i + 1 and judgment i + 1; row 1: user 1 prefers jpg_1
    import_pickapic(store, write_parquet(tmp_path / "first.parquet", cols), show_progress=False)
    row = {i: {key: values[i] for key, values in cols.items()} for i in range(6)}
    fresh = {**row[0], "jpg_0": drawn_image(500), "jpg_1": drawn_image(501), "ranking_id": 7000}
    before = _store_state(store)
    contradictions = {
        "row 1, column 'label_0': contradicts judgment 2, imported before": {
            **row[1], "label_0": 1.0, "label_1": 0.0, "ranking_id": 7001},
        "row 1, column 'label_0': contradicts judgment 2, imported before: the same user judged": {
            **row[1], "jpg_0": row[1]["jpg_1"], "jpg_1": row[1]["jpg_0"], "ranking_id": 7002},
        "row 1, column 'ranking_id': ranking id '1001' was imported before (judgment 2)": {
            **row[1], "label_0": 1.0, "label_1": 0.0},
        "row 1, column 'label_0': contradicts judgment 2, imported before: the same user judged the same two "
        "images, preferring image": {**row[1], "label_0": 0.5, "label_1": 0.5, "ranking_id": 7003},
    }  # fmt: skip
    for message, bad in contradictions.items():
        with pytest.raises(ImportFormatError, match=re.escape(message)):
            import_pickapic(store, _one_file(tmp_path / "bad.parquet", fresh, bad), show_progress=False)
        assert _store_state(store) == before, message
    repeats = [
        row[1],  # the same ranking id, images and labels
        {**row[2], "ranking_id": 7004},  # another ranking id
        {**_swapped(cols, 3), "ranking_id": 7005},  # the images in the other order
    ]
    other_user = {**_swapped(cols, 5), "user_id": 9, "ranking_id": 7006}  # a new judgment of pair 6
    report = import_pickapic(
        store, _one_file(tmp_path / "second.parquet", *repeats, other_user, fresh), show_progress=False
    )
    assert (report.rows, report.duplicates, report.judgments, report.pairs, report.images) == (5, 3, 2, 1, 2)
    with store.read() as con:
        assert scalar(con, "SELECT count(*) FROM pairs") == 7
        assert con.execute(
            "SELECT j.pair_id, j.outcome FROM judgments j JOIN annotators a ON a.id = j.annotator_id "
            "WHERE a.name = 'pickapic:9'"
        ).fetchall() == [(6, "b")]  # row 5 prefers jpg_1, pair 6's image b


def test_corrupt_parquet_pages_and_invalid_utf8_are_named(store: Store, tmp_path: Path) -> None:
    good = write_parquet(tmp_path / "good.parquet", pickapic_rows(4)).read_bytes()
    before = _store_state(store)
    for offset in (4, 30, len(good) // 2):
        data = bytearray(good)
        for k in range(offset, offset + 20):
            data[k] ^= 0x5A
        (tmp_path / "corrupt.parquet").write_bytes(bytes(data))
        with pytest.raises(ImportFormatError, match=r"row 0, column '\w+': corrupt Parquet data|not a Parquet file"):
            import_pickapic(store, tmp_path / "corrupt.parquet", show_progress=False)
    cols = pickapic_rows(4)
    texts = [c.encode() for c in cols["caption"]]
    texts[2] = b"caption \xff\xfe"
    offsets = np.cumsum([0] + [len(t) for t in texts]).astype(np.int32)
    captions = pa.Array.from_buffers(pa.string(), 4, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(texts))])
    table = pa.table({**{k: v for k, v in cols.items() if k != "caption"}, "caption": captions})
    pq.write_table(table, tmp_path / "utf8.parquet")
    with pytest.raises(ImportFormatError, match="row 2, column 'caption': not valid text"):
        import_pickapic(store, tmp_path / "utf8.parquet", show_progress=False)
    assert _store_state(store) == before


_BYTES = st.sampled_from(["good", "same", "truncated", "appended", "random", "empty"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    caption=st.one_of(st.text(max_size=20), st.just("x" * 10_001), st.none()),
    labels=st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0, float("nan")]), st.sampled_from([0.0, 0.5, 1.0, -1.0])),
    image=_BYTES,
    uid=st.one_of(st.none(), st.text(max_size=12), st.just("../etc"), st.just("u" * 200)),
    user=st.one_of(st.none(), st.text(max_size=12), st.just("u" * 300)),
    repeat=st.sampled_from(["none", "same", "flipped"]),
)
def test_fuzz_pickapic_rows_are_refused_by_row_and_column_or_imported_and_readable(
    tmp_path_factory: pytest.TempPathFactory, caption, labels, image, uid, user, repeat
) -> None:
    folder = tmp_path_factory.mktemp("pickapic-fuzz")
    store = Store.open(folder / "home")
    cols = pickapic_rows(3)
    cols["user_id"] = [str(u) for u in cols["user_id"]]
    good = drawn_image(77)
    cols["jpg_1"][1] = {
        "good": good, "same": cols["jpg_0"][1], "truncated": good[: len(good) // 2], "appended": good + b"PK\x03\x04",
        "random": bytes(range(256)) * 3, "empty": b"",
    }[image]  # fmt: skip
    cols["caption"][1] = caption
    cols["label_0"][1], cols["label_1"][1] = labels
    cols["image_0_uid"][1] = uid
    cols["user_id"][1] = user
    if repeat != "none":
        for key in cols:
            cols[key].append(cols[key][1])
        if repeat == "flipped":
            cols["label_0"][-1], cols["label_1"][-1] = cols["label_1"][1], cols["label_0"][1]
    path = write_parquet(folder / "f.parquet", cols)
    before = _store_state(store)
    try:
        report = import_pickapic(store, path, show_progress=False)
    except ImportFormatError as e:
        assert re.match(r"row \d, column '\w+': .+", str(e)), str(e)
        assert _store_state(Store.open(store.home)) == before
        return
    (prompts, images, pairs, judgments), media = _store_state(Store.open(store.home))
    assert pairs == judgments == report.judgments == 3
    assert images == len(media) == 6


# 5. Training inputs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("sd15") / "sd15")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": "abc"}, "learning_rate must be a finite number, got 'abc'"),
        ({"max_steps": 1.5}, "max_steps must be a whole number, got 1.5"),
        ({"beta": float("inf")}, "beta must be a finite number, got inf"),
        ({"random_flip": "yes"}, "random_flip must be true or false, got 'yes'"),
        ({"lora_targets": "to_q"}, "lora_targets must be a list of str, got 'to_q'"),
        ([1, 2], "must hold a JSON object of DPOConfig options, got a list"),
    ],
)
def test_a_bad_config_json_is_refused_naming_the_field(tmp_path: Path, change, message: str) -> None:
    from training.config import ConfigError, DPOConfig

    base = {"pretrained_model": "/m", "dataset": "/d", "output_dir": str(tmp_path / "out")}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**base, **change} if isinstance(change, dict) else change))
    with pytest.raises(ConfigError, match=re.escape(message)):
        DPOConfig.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the DPOConfig file"):
        DPOConfig.from_json(path)
    assert not (tmp_path / "out").exists()


def test_truncated_unet_weights_are_refused_when_the_config_is_made(tiny_sd15: Path, tmp_path: Path) -> None:
    import shutil

    from tiny_models import tiny_dpo_config, write_snapshot

    from training.config import ConfigError

    model = Path(shutil.copytree(tiny_sd15, tmp_path / "model"))
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    snapshot = write_snapshot(tmp_path / "snapshot", n_pairs=2)
    tiny_dpo_config(model, snapshot, tmp_path / "out")  # whole weights are accepted
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ConfigError, match=f"pretrained_model: the weights file {re.escape(str(weights))} is truncated"):
        tiny_dpo_config(model, snapshot, tmp_path / "out")


def test_a_bad_snapshot_fails_before_any_training(tiny_sd15: Path, tmp_path: Path) -> None:
    import shutil

    from tiny_models import tiny_dpo_config, write_snapshot

    from training.data import SnapshotError
    from training.dpo import main

    good = write_snapshot(tmp_path / "good", n_pairs=2)

    def csv_pairs(folder: Path) -> None:
        (folder / "pairs.parquet").write_text("pair_id,prompt\n1,a red circle\n")

    def corrupt_pairs(folder: Path) -> None:
        data = bytearray((folder / "pairs.parquet").read_bytes())
        data[4:40] = bytes(36)
        (folder / "pairs.parquet").write_bytes(bytes(data))

    def image_missing(folder: Path) -> None:
        sorted((folder / "images").iterdir())[0].unlink()

    def bad_manifest(folder: Path) -> None:
        (folder / "manifest.json").write_text("{truncated")

    def image_damaged(folder: Path) -> None:
        image = sorted((folder / "images").iterdir())[0]
        data = bytearray(image.read_bytes())
        data[-20] ^= 0xFF  # one byte of the last IDAT chunk: PIL still opens the file
        image.write_bytes(bytes(data))

    def image_unreadable_without_uids(folder: Path) -> None:
        pl.read_parquet(folder / "pairs.parquet").drop("image_0_uid", "image_1_uid").write_parquet(folder / "pairs.parquet")
        image = sorted((folder / "images").iterdir())[0]
        image.write_bytes(image.read_bytes()[:60])

    cases = {
        "pairs.parquet is not a readable Parquet file": csv_pairs,
        "pairs.parquet is not a readable Parquet file:": corrupt_pairs,
        "1 image file(s) named in pairs.parquet are missing": image_missing,
        "named in pairs.parquet is damaged: its sha256 is not its uid in pairs.parquet": image_damaged,
        "named in pairs.parquet is damaged: not a readable image": image_unreadable_without_uids,
        "manifest.json is not valid JSON": bad_manifest,
    }
    for message, damage in cases.items():
        folder = Path(shutil.copytree(good, tmp_path / damage.__name__))
        damage(folder)
        out = tmp_path / f"out-{damage.__name__}"
        with pytest.raises(SnapshotError, match=re.escape(message)):
            main(tiny_dpo_config(tiny_sd15, folder, out))
        assert not list(out.glob("checkpoints/*")) and not (out / "final").exists()  # nothing trained
