"""The workbench store: one home folder holding the DuckDB file, media, dataset versions and runs.

Every process (the Streamlit server, CLI commands, syncs, jobs) goes through :class:`Store`,
which opens the DuckDB file only for one operation at a time behind a cross-process
reader/writer lock (see :mod:`datastore.lock`). Callers never see DuckDB's own lock error, and
every ``write()`` block is one transaction: it commits whole or not at all, also when the
process is killed. Single judgments go through :meth:`Store.record_judgment` into the judgment
inbox (:mod:`datastore.inbox`), which the next ``read()`` or ``write()`` applies first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from threading import Lock

import duckdb
import numpy as np

from datastore.errors import NotFoundError, StoreError
from datastore.inbox import INBOX_FILE, Inbox
from datastore.lock import file_lock
from datastore.media import DEFAULT_MAX_PIXELS, MediaStore
from datastore.records import NewJudgment, judgment_row, validate_judgment
from datastore.schema import MIGRATIONS
from datastore.sql import scalar

DB_FILE = "workbench.duckdb"


@dataclass(frozen=True)
class StoreConfig:
    """Options of the store.

    Attributes:
        lock_timeout_s: how long an operation waits for other processes before failing with
            StoreBusyError. Long on purpose: a wait is normal under load, a failure is not.
        max_image_bytes: largest image file the media store accepts.
        max_image_pixels: largest image (width x height) the media store accepts, checked from
            the file's header before decoding (a decompression bomb is refused unexpanded).
    """

    lock_timeout_s: float = 120.0
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = DEFAULT_MAX_PIXELS


class Store:
    """A workbench home folder. Create with :meth:`open`.

    Layout: ``workbench.duckdb``, ``inbox.sqlite`` (judgments not yet applied), ``media/``
    (content-addressed images), ``datasets/`` (immutable dataset versions), ``runs/`` (one
    folder per job), ``models/`` (checkpoints).
    """

    def __init__(self, home: Path, config: StoreConfig):
        self.home = home
        self.config = config
        self.db_path = home / DB_FILE
        self.lock_path = home / ".workbench.lock"
        self.media = MediaStore(home / "media", max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels)
        self.datasets_dir = home / "datasets"
        self.runs_dir = home / "runs"
        self.models_dir = home / "models"
        self.inbox = Inbox(home / INBOX_FILE, busy_timeout_s=config.lock_timeout_s)
        self._pairs = _KnownIds("pairs")
        self._annotators = _KnownIds("annotators")
        self._known_lock = Lock()

    @classmethod
    def open(cls, home: Path | str, config: StoreConfig | None = None) -> Store:
        """Open (creating if needed) the store in ``home`` and apply pending migrations."""
        home = Path(home).expanduser().resolve()
        try:
            home.mkdir(parents=True, exist_ok=True)
            for sub in ("media", "datasets", "runs", "models"):
                (home / sub).mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the workbench home {home}: {e}") from e
        store = cls(home, config or StoreConfig())
        store._migrate()
        return store

    def record_judgment(self, judgment: NewJudgment) -> int:
        """Record one judgment through the inbox; returns its inbox row id once it is on disk, or 0
        when its ``idempotency_key`` was accepted before (a resend: nothing is written).

        Takes a few milliseconds and never waits for DuckDB: the judgment is applied by the next
        ``read()`` or ``write()`` of any process, so every read started after this returns sees
        it. It is checked in full first (fields, pair and annotator exist); a refused judgment
        leaves the inbox unchanged. Bulk writers (imports, AI labelling, syncs) should instead
        insert many judgments in one ``write()``.

        Raises:
            StoreError: a malformed field: a wrong type (``score_a="high"``, ``is_gold="no"``), a
                number that is not finite or out of range, text too long or not UTF-8.
            NotFoundError: the pair or the annotator does not exist.
            DuplicateJudgmentError: this annotator's answer to this pair went through the inbox before.
        """
        validate_judgment(judgment)
        judgment = NewJudgment(**judgment_row(judgment))  # numpy scalars become Python numbers
        checks = ((self._pairs, judgment.pair_id), (self._annotators, judgment.annotator_id))
        with self._known_lock:
            if not all(known.has(key) for known, key in checks):
                # Filled on a process's first judgment, then only on a miss: one read for both.
                with self._read_without_drain() as con:
                    for known, key in checks:
                        known.refresh(con, key)
        for known, key in checks:
            if not known.has(key):
                raise NotFoundError(
                    f"judgment of pair {judgment.pair_id}: {known.table[:-1]} {key} does not exist"
                )
        return self.inbox.append(judgment)

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction, held alone across processes.

        Pending inbox judgments are applied first, in a transaction of their own. The block's
        statements commit together when it exits normally and roll back when it raises. Keep
        the block short: every other process waits for it.
        """
        with self._write(drain=True) as con:
            yield con

    @contextmanager
    def _write(self, *, drain: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        with file_lock(self.lock_path, exclusive=True, timeout_s=self.config.lock_timeout_s):
            con = self._connect(read_only=False)
            try:
                if drain and self.inbox.has_pending():
                    self._drain(con)
                with self._transaction(con, "commit to"):
                    yield con
            finally:
                con.close()

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection; many readers may hold one at once, never alongside a writer.

        When inbox judgments are pending, a shared lock cannot apply them, so this reader takes
        the write lock instead, applies them and reads on that same connection (one open, and
        a transaction rolled back at the end): it sees every judgment acknowledged before.
        """
        if self.inbox.has_pending():
            with file_lock(self.lock_path, exclusive=True, timeout_s=self.config.lock_timeout_s):
                # Checked again under the lock: another process may have applied them meanwhile.
                if self.inbox.has_pending():
                    con = self._connect(read_only=False)
                    try:
                        self._drain(con)
                        con.execute("BEGIN TRANSACTION")
                        try:
                            yield con
                        finally:
                            con.execute("ROLLBACK")
                    finally:
                        con.close()
                    return
        with self._read_without_drain() as con:
            yield con

    @contextmanager
    def _read_without_drain(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with file_lock(self.lock_path, exclusive=False, timeout_s=self.config.lock_timeout_s):
            con = self._connect(read_only=True)
            try:
                yield con
            finally:
                con.close()

    def _drain(self, con: duckdb.DuckDBPyConnection) -> None:
        """Apply the pending inbox judgments in one transaction; the caller holds the write lock."""
        with self._transaction(con, "apply the judgment inbox to"):
            through = self.inbox.apply(con)
        # Only now: a crash before this line leaves rows that the next drain skips by the mark.
        self.inbox.forget_through(through)

    @contextmanager
    def _transaction(self, con: duckdb.DuckDBPyConnection, action: str) -> Iterator[None]:
        """Commits the block's statements together, or rolls them back when it raises."""
        con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        try:
            con.execute("COMMIT")
        except duckdb.Error as e:
            raise StoreError(f"could not {action} {self.db_path}: {e}") from e

    def _connect(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(self.db_path), read_only=read_only, config={"threads": 2})
        except duckdb.Error as e:
            raise StoreError(f"cannot open the store database {self.db_path}: {e}") from e

    def _migrate(self) -> None:
        with self._write(drain=False) as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp)"
            )
            applied = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, sql in MIGRATIONS:
                if version in applied:
                    continue
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations (version) VALUES (?)", [version])

    def schema_version(self) -> int:
        """The highest migration applied to this store."""
        with self.read() as con:
            return scalar(con, "SELECT max(version) FROM schema_migrations")


class _KnownIds:
    """Ids known to exist in a table whose rows are never deleted (pairs, annotators).

    Ids come from a sequence and every insert runs under the store's write lock, so a refresh
    asks only for the ids above the largest known one (and the id that missed).
    """

    def __init__(self, table: str):
        self.table = table
        self._known = np.zeros(0, dtype=bool)

    def has(self, key: int) -> bool:
        """Whether ``key`` was seen in the table by the last refresh."""
        return 0 <= key < len(self._known) and bool(self._known[key])

    def refresh(self, con: duckdb.DuckDBPyConnection, key: int) -> None:
        """Learn the ids added since the last refresh, and whether ``key`` exists."""
        ids = con.execute(
            f"SELECT id FROM {self.table} WHERE id >= ? OR id = ?", [len(self._known), key]
        ).fetchnumpy()["id"]
        if len(ids):
            grown = np.zeros(max(len(self._known), int(ids.max()) + 1), dtype=bool)
            grown[: len(self._known)] = self._known
            grown[ids] = True
            self._known = grown
