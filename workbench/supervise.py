"""The supervisor of one background job: runs the job's command with its output in the job's log,
then records how it ended (see `workbench.jobs`).

Started by `workbench.jobs.launch_job` as ``python -m workbench.supervise --home HOME ID`` in a new
session, so that it leads the job's process group; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import threading
from pathlib import Path

from datastore.store import Store
from workbench.jobs import finish_job, get_job, log_tail


def supervise(home: Path, job_id: int) -> int:
    """Runs a job's command with its output in the log, then records how it ended.

    SIGTERM (from `workbench.jobs.stop_job`) is recorded as a stop.

    Returns:
        The command's exit status (negative: killed by that signal).
    """
    store = Store.open(home)
    job = get_job(store, job_id, check=False)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    with job.log_path.open("ab") as log:
        log.write(f"\n=== job {job_id} attempt {job.attempts}: {' '.join(job.command)}\n".encode())
        log.flush()
        try:
            child = subprocess.Popen(
                job.command, cwd=job.cwd, env={**os.environ, **job.env}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        except OSError as e:
            finish_job(store, job_id, "failed", error=f"could not start {job.command[0]}: {e}")
            return 127
        code = child.wait()
    if stopping.is_set() or get_job(store, job_id, check=False).stop_requested:
        finish_job(
            store, job_id, "stopped", exit_code=code, error=f"stopped on request after attempt {job.attempts}"
        )
    elif code == 0:
        finish_job(store, job_id, "finished", exit_code=0)
    else:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        finish_job(
            store,
            job_id,
            "failed",
            exit_code=code,
            error=f"{how}; last lines of {job.log_path}:\n{log_tail(job)}",
        )
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Supervisor of one background job (started by workbench.jobs).")
    parser.add_argument("--home", type=Path, required=True, help="Workbench home folder holding the store.")
    parser.add_argument("job_id", type=int, help="Id of the job to run.")
    arguments = parser.parse_args()
    supervise(arguments.home, arguments.job_id)
