"""The workbench store: one home folder holding the DuckDB file, media, dataset versions and runs.

Every process (the Streamlit server, CLI commands, syncs, jobs) goes through :class:`Store`,
which opens the DuckDB file only for one operation at a time behind a cross-process
reader/writer lock (see :mod:`datastore.lock`). Callers never see DuckDB's own lock error, and
every ``write()`` block is one transaction: it commits whole or not at all, also when the
process is killed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from datastore.errors import StoreError
from datastore.lock import file_lock
from datastore.media import MediaStore
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
    """

    lock_timeout_s: float = 120.0
    max_image_bytes: int = 20 * 1024 * 1024


class Store:
    """A workbench home folder. Create with :meth:`open`.

    Layout: ``workbench.duckdb``, ``media/`` (content-addressed images), ``datasets/``
    (immutable dataset versions), ``runs/`` (one folder per job), ``models/`` (checkpoints).
    """

    def __init__(self, home: Path, config: StoreConfig):
        self.home = home
        self.config = config
        self.db_path = home / DB_FILE
        self.lock_path = home / ".workbench.lock"
        self.media = MediaStore(home / "media", max_bytes=config.max_image_bytes)
        self.datasets_dir = home / "datasets"
        self.runs_dir = home / "runs"
        self.models_dir = home / "models"

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

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection inside one transaction, held alone across processes.

        The block's statements commit together when it exits normally and roll back when it
        raises. Keep the block short: every other process waits for it.
        """
        with file_lock(self.lock_path, exclusive=True, timeout_s=self.config.lock_timeout_s):
            con = self._connect(read_only=False)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                try:
                    con.execute("COMMIT")
                except duckdb.Error as e:
                    raise StoreError(f"could not commit to {self.db_path}: {e}") from e
            finally:
                con.close()

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection; many readers may hold one at once, never alongside a writer."""
        with file_lock(self.lock_path, exclusive=False, timeout_s=self.config.lock_timeout_s):
            con = self._connect(read_only=True)
            try:
                yield con
            finally:
                con.close()

    def _connect(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(self.db_path), read_only=read_only, config={"threads": 2})
        except duckdb.Error as e:
            raise StoreError(f"cannot open the store database {self.db_path}: {e}") from e

    def _migrate(self) -> None:
        with self.write() as con:
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
