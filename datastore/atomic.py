"""Writing files and folders so that a reader or a crash never sees half of one.

Every write goes to a temporary name in the destination's folder (same file system), is fsynced,
and is renamed over the destination with ``os.replace``, which is atomic on POSIX: the
destination holds either its old content or the whole new one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def writing(path: str | Path, *, sync: bool = True, private: bool = False) -> Iterator[Path]:
    """Yields a new, empty temporary file beside ``path`` to write; on success it replaces ``path``.

    Args:
        path: The destination file.
        sync: fsync the file before the rename (off only for data that can be rewritten).
        private: Create the file with mode 0600 (e.g. for credentials) instead of the umask's mode.

    Raises:
        Whatever the block raises; the temporary file is removed then and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666))
    try:
        yield tmp
        if sync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes, *, sync: bool = True, private: bool = False) -> None:
    """Writes ``data`` to ``path`` atomically (see `writing` for the options)."""
    with writing(path, sync=sync, private=private) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str, *, private: bool = False) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode(), private=private)


def write_json(path: str | Path, obj: Any) -> None:
    """Writes ``obj`` as indented JSON with sorted keys to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def replace_folder(source: Path | Callable[[Path], None], dest: str | Path) -> Path:
    """Puts a complete folder at ``dest``, replacing what was there.

    Args:
        source: A folder already written beside ``dest`` (it is renamed), or a function that writes
            the folder given to it: a new, empty temporary folder beside ``dest``.
        dest: The destination folder.

    Returns:
        ``dest``.
    """
    dest = Path(dest)
    if callable(source):
        tmp = dest.with_name(f".tmp-{dest.name}-{secrets.token_hex(4)}")
        tmp.mkdir()
        try:
            source(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        tmp = Path(source)
    for file in tmp.rglob("*"):
        if file.is_file():
            _fsync(file)
    _fsync(tmp)
    if dest.exists():
        remove_folder(dest)
    os.replace(tmp, dest)
    return dest


def remove_folder(folder: Path) -> None:
    """Deletes a folder so that no half-deleted copy is ever seen under its name."""
    trash = folder.with_name(f".trash-{folder.name}-{secrets.token_hex(4)}")
    os.replace(folder, trash)
    shutil.rmtree(trash)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
