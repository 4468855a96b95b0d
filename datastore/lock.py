"""A cross-process reader/writer lock on a file (``flock``), with a timeout.

DuckDB lets one process hold a database file read-write, and no other process may open it at
all meanwhile. Every process therefore opens the file only for the length of one operation,
behind this lock: readers share it, a writer holds it alone. ``flock`` locks belong to an open
file description, so two threads of one process exclude each other the same way two
processes do, and the kernel drops a lock when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from datastore.errors import StoreBusyError

_MAX_POLL_S = 0.002
_HANDOFF_S = 0.003
_last_release = threading.local()


@contextmanager
def file_lock(
    path: Path,
    *,
    exclusive: bool,
    timeout_s: float,
    handoff_s: float = _HANDOFF_S,
    max_poll_s: float = _MAX_POLL_S,
) -> Iterator[None]:
    """Hold a shared or exclusive lock on ``path`` for the duration of the block.

    Args:
        handoff_s: a thread that released this lock less than this long ago waits about this
            long before asking again. Sized to the lock's usual holding time.
        max_poll_s: longest sleep between two tries.

    Raises:
        StoreBusyError: the lock could not be taken within ``timeout_s`` seconds.
    """
    # flock has no queue: a holder that releases and asks again at once would win every race
    # against waiters asleep between polls. A thread that released a moment ago first leaves a
    # short window for them, which keeps tail latency bounded under load.
    released = getattr(_last_release, "at", None)
    if released is None:
        released = _last_release.at = {}
    since_release = time.monotonic() - released.get(path, float("-inf"))
    if since_release < handoff_s:
        time.sleep(random.uniform(0.5, 1.0) * handoff_s)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout_s
        delay = 0.0002
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    kind = "write" if exclusive else "read"
                    raise StoreBusyError(
                        f"could not take the {kind} lock on {path} within {timeout_s:.0f} s: "
                        "another process holds the store; retry, or raise lock_timeout_s"
                    ) from None
                time.sleep(random.uniform(0.5, 1.0) * delay)
                delay = min(delay * 2, max_poll_s)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
        _last_release.at[path] = time.monotonic()
