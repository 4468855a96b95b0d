"""The judgment inbox: single judgments are acknowledged in milliseconds, then applied in batches.

Opening the DuckDB file costs about 10 ms and a write holds the store's exclusive lock for
about 20 ms, so interactive writers queue behind each other. Instead, one judgment is appended
to ``<home>/inbox.sqlite`` (SQLite in WAL mode, one fsync'd commit, safe for many processes at
once) and the call returns. :class:`~datastore.store.Store` applies every pending row to DuckDB
in one transaction whenever it next opens the file, before any read or write, so every reader
sees every acknowledged judgment.

Applying is idempotent under a crash at any point: the DuckDB table ``inbox_applied`` records,
in the same transaction as the judgments, the highest inbox row applied (per inbox file, named
by a random id made with the file), and rows are deleted from the inbox only after that commit.
A later drain skips rows at or below the mark. SQLite hands out row ids in commit order (it has
one writer at a time and ``AUTOINCREMENT`` never reuses an id), so the mark is exact.

A row that cannot be applied (one written by hand or by an older version that checked less) is
moved to the DuckDB table ``inbox_quarantine`` with its error, in the same transaction, so it
never blocks a drain; ``workbench stats`` counts it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from contextlib import AbstractContextManager
from dataclasses import fields
from datetime import datetime
from pathlib import Path

import duckdb

from datastore.errors import DuplicateJudgmentError, StoreError
from datastore.lock import file_lock
from datastore.records import NewJudgment, insert_judgments, judgment_row, validate_judgment
from datastore.sql import scalar

INBOX_FILE = "inbox.sqlite"

_COLUMNS = [f.name for f in fields(NewJudgment)]
_TIMES = ("shown_at", "answered_at")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(_COLUMNS)}
);
-- Every (pair, annotator) ever accepted, so that a second answer is refused at once; a
-- withdrawn one (an undo) lets the annotator answer that pair again.
CREATE TABLE IF NOT EXISTS answered (
    pair_id INTEGER NOT NULL,
    annotator_id INTEGER NOT NULL,
    withdrawn INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pair_id, annotator_id)
) WITHOUT ROWID;
-- Every idempotency key ever accepted, so that a resent judgment is recognised quietly.
CREATE TABLE IF NOT EXISTS idempotency_keys (idempotency_key TEXT PRIMARY KEY) WITHOUT ROWID;
"""
_ADDED_COLUMNS = (
    ("pending", "idempotency_key TEXT"),
    ("answered", "withdrawn INTEGER NOT NULL DEFAULT 0"),
    ("pending", "preview TEXT"),
)
"""Columns newer than some inbox files: added on open where missing."""


class Inbox:
    """The SQLite file of judgments acknowledged but not yet applied to DuckDB.

    One connection per process, shared by its threads behind a lock (every statement here takes
    well under a millisecond unless another process is committing).
    """

    def __init__(self, path: Path, *, busy_timeout_s: float):
        self.path = path
        self.lock_path = path.with_name(f".{path.name}.lock")
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._quarantined: list[tuple[int, int]] = []  # (pair, annotator) of rows the last apply() refused
        self._pid = -1
        with self._lock:
            con = self._connection()
            try:
                with con:
                    con.executescript(_SCHEMA)
                    for table, column in _ADDED_COLUMNS:
                        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})").fetchall()}
                        if column.split()[0] not in have:
                            con.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                    con.execute("INSERT OR IGNORE INTO meta VALUES ('inbox_id', ?)", [uuid.uuid4().hex])
                self.inbox_id = con.execute("SELECT value FROM meta WHERE key = 'inbox_id'").fetchall()[0][0]
            except sqlite3.Error as e:
                raise StoreError(f"cannot set up the judgment inbox {path}: {e}") from e

    def _write_lock(self) -> AbstractContextManager[None]:
        # SQLite's own busy handler sleeps up to 100 ms between tries, so under a stream of
        # writers an unlucky one can wait seconds. The flock lock polls often and leaves
        # waiters a window after each release (an append holds it well under a millisecond).
        return file_lock(
            self.lock_path, exclusive=True, timeout_s=self.busy_timeout_s, handoff_s=0.0005, max_poll_s=0.0005
        )

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross a fork: a child process opens its own.
        if self._con is None or self._pid != os.getpid():
            try:
                con = sqlite3.connect(
                    self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
                )
                # WAL persists in the file; switching needs a lock, so only the creator does it.
                if con.execute("PRAGMA journal_mode").fetchall()[0][0] != "wal":
                    con.execute("PRAGMA journal_mode=WAL")
                # FULL: a judgment is on disk when append() returns, also across a power cut.
                con.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as e:
                raise StoreError(f"cannot open the judgment inbox {self.path}: {e}") from e
            self._con, self._pid = con, os.getpid()
        return self._con

    def append(self, judgment: NewJudgment) -> int:
        """Accept one judgment (already validated); returns its inbox row id once it is on disk.

        Returns 0 and writes nothing when the judgment's ``idempotency_key`` was accepted before
        (a resend), whatever happened to that judgment since.

        Raises:
            DuplicateJudgmentError: this annotator's answer to this pair was accepted before
                and not withdrawn.
        """
        row = judgment_row(judgment)
        for key in _TIMES:
            row[key] = row[key].isoformat() if row[key] is not None else None
        with self._lock, self._write_lock():
            con = self._connection()
            try:
                with con:
                    con.execute("BEGIN IMMEDIATE")
                    if judgment.idempotency_key is not None and not con.execute(
                        "INSERT OR IGNORE INTO idempotency_keys VALUES (?)", [judgment.idempotency_key]
                    ).rowcount:
                        return 0
                    con.execute(
                        "INSERT INTO answered VALUES (?, ?, 0) "
                        "ON CONFLICT (pair_id, annotator_id) DO UPDATE SET withdrawn = 0 WHERE withdrawn",
                        [judgment.pair_id, judgment.annotator_id],
                    )
                    if not con.execute("SELECT changes()").fetchall()[0][0]:
                        raise sqlite3.IntegrityError("answered before")
                    cur = con.execute(
                        f"INSERT INTO pending ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                        [row[c] for c in _COLUMNS],
                    )
                    return cur.lastrowid
            except sqlite3.IntegrityError:
                raise DuplicateJudgmentError(
                    f"annotator {judgment.annotator_id} already judged pair {judgment.pair_id}"
                ) from None
            except sqlite3.Error as e:
                raise StoreError(f"cannot write to the judgment inbox {self.path}: {e}") from e

    def withdraw(self, pair_id: int, annotator_id: int) -> None:
        """Let the annotator answer the pair again (their judgment of it was withdrawn)."""
        with self._lock, self._write_lock():
            con = self._connection()
            try:
                with con:
                    con.execute(
                        "UPDATE answered SET withdrawn = 1 WHERE pair_id = ? AND annotator_id = ?", [pair_id, annotator_id]
                    )
            except sqlite3.Error as e:
                raise StoreError(f"cannot write to the judgment inbox {self.path}: {e}") from e

    def has_pending(self) -> bool:
        """Whether some acknowledged judgment is not yet applied (one indexed lookup)."""
        with self._lock:
            return bool(self._connection().execute("SELECT EXISTS (SELECT 1 FROM pending)").fetchall()[0][0])

    def pending(self) -> list[tuple[int, dict]]:
        """Every pending row as (inbox id, its stored values by column), oldest first."""
        with self._lock:
            rows = (
                self._connection()
                .execute(f"SELECT id, {', '.join(_COLUMNS)} FROM pending ORDER BY id")
                .fetchall()
            )
        return [(inbox_id, dict(zip(_COLUMNS, values, strict=True))) for inbox_id, *values in rows]

    def forget_through(self, inbox_id: int) -> None:
        """Delete the pending rows up to ``inbox_id`` (call only after they are committed to DuckDB).

        The annotators of rows that the last :meth:`apply` quarantined may answer those pairs again.
        """
        released, self._quarantined = self._quarantined, []
        with self._lock, self._write_lock():
            con = self._connection()
            with con:
                con.execute("DELETE FROM pending WHERE id <= ?", [inbox_id])
                con.executemany(
                    "UPDATE answered SET withdrawn = 1 WHERE pair_id = ? AND annotator_id = ?", released
                )

    def apply(self, con: duckdb.DuckDBPyConnection) -> int:
        """Insert the pending judgments not yet applied, inside the caller's DuckDB transaction.

        Records the new high-water mark in ``inbox_applied`` in the same transaction, and the rows
        that cannot be applied (a malformed field, a pair or annotator that does not exist) in
        ``inbox_quarantine``. Returns the highest inbox id now applied
        (0 when nothing was pending); pass it to :meth:`forget_through` after the commit.
        """
        self._quarantined = []
        rows = self.pending()
        if not rows:
            return 0
        done = scalar(con, "SELECT through_id FROM inbox_applied WHERE inbox_id = ?", [self.inbox_id]) or 0
        checked, refused = [], []

        def refuse(inbox_row: int, values: dict, error: str) -> None:
            refused.append([self.inbox_id, inbox_row, json.dumps(values, default=repr), error])
            if all(isinstance(values[k], int) for k in ("pair_id", "annotator_id")):
                self._quarantined.append((values["pair_id"], values["annotator_id"]))

        for inbox_row, values in rows:
            if inbox_row <= done:
                continue
            try:
                checked.append((inbox_row, values, stored_judgment(values)))
            except StoreError as e:
                refuse(inbox_row, values, str(e))
        # The judgments table has no foreign keys: a row naming a pair or annotator that is not
        # there (written by hand, or by a version that did not check) is quarantined too.
        pairs = _existing(con, "pairs", [j.pair_id for _, _, j in checked])
        annotators = _existing(con, "annotators", [j.annotator_id for _, _, j in checked])
        fresh = []
        for inbox_row, values, j in checked:
            if j.pair_id not in pairs:
                refuse(inbox_row, values, f"judgment of pair {j.pair_id}: pair {j.pair_id} does not exist")
            elif j.annotator_id not in annotators:
                refuse(inbox_row, values, f"judgment of pair {j.pair_id}: annotator {j.annotator_id} does not exist")
            else:
                fresh.append(j)
        through = rows[-1][0]
        if fresh or refused:
            insert_judgments(con, fresh)
            if refused:
                con.executemany(
                    "INSERT OR IGNORE INTO inbox_quarantine (inbox_id, inbox_row, fields, error) VALUES (?, ?, ?, ?)",
                    refused,
                )
            con.execute(
                "INSERT OR REPLACE INTO inbox_applied (inbox_id, through_id) VALUES (?, ?)",
                [self.inbox_id, through],
            )
        return through


def _existing(con: duckdb.DuckDBPyConnection, table: str, ids: list[int]) -> set[int]:
    """Those of ``ids`` that are rows of ``table`` (pairs or annotators)."""
    rows = con.execute(f"SELECT id FROM {table} WHERE id IN (SELECT unnest(?::BIGINT[]))", [ids]).fetchall()
    return {r[0] for r in rows}


def stored_judgment(values: dict) -> NewJudgment:
    """The judgment of one inbox row's stored values, checked in full.

    Raises:
        StoreError: naming the field that is malformed.
    """
    row = dict(values)
    for key in _TIMES:
        if row[key] is not None:
            try:
                row[key] = datetime.fromisoformat(row[key])
            except (TypeError, ValueError):
                raise StoreError(f"judgment {key} must be an ISO timestamp or None, got {row[key]!r}") from None
    # SQLite stores a bool as 0 / 1; anything else was never a bool.
    if row["is_gold"] not in (0, 1) or isinstance(row["is_gold"], float | str):
        raise StoreError(f"judgment is_gold must be True or False, got {row['is_gold']!r}")
    row["is_gold"] = bool(row["is_gold"])
    judgment = NewJudgment(**row)
    validate_judgment(judgment)
    return judgment
