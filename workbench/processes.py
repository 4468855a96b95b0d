"""The operating-system side of background jobs: whether a recorded process is still ours, and
ending a job's whole process group."""

from __future__ import annotations

import os
import signal
import time

import psutil


def create_time(pid: int) -> float | None:
    """When process ``pid`` started (to tell it from a later process with the same id), or None."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def liveness(pid: int | None, created: float | None) -> str | None:
    """None when the process is ours and alive, else why not."""
    if pid is None:
        return "it has no process"
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return f"its process {pid} has exited without recording how"
        if created is not None and abs(process.create_time() - created) > 0.01:
            return f"its process id {pid} now belongs to another program ({process.name()})"
    except psutil.NoSuchProcess:
        return f"its process {pid} is gone (killed, or the machine restarted)"
    return None


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace_s`` seconds; returns once it is gone."""
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
        while group_alive(pgid):
            time.sleep(0.05)
