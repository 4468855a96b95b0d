"""Background jobs: training and generation as subprocesses that outlive the app that started them.

A job is a row of the store's ``jobs`` table and a small supervisor process::

    launcher (app, CLI)          supervisor (own session)            the real command
    launch_job() ─ insert row ─► python -m workbench.supervise ─────► accelerate launch -m training.dpo ...
                                 waits, writes finished / failed /      stdout + stderr -> <run_dir>/job.log
                                 stopped (with the log tail)

The supervisor leads a new session, so the job is one process group: `stop_job` sends SIGTERM
to the group and SIGKILL after a grace period. Everything a page or a CLI command shows (status,
progress, metrics, log) is read from the store and the run folder (`training.runs.Run`), so any process can list jobs
and re-attach; a job recorded as running whose process is gone, or whose pid now belongs to
another program, is marked failed on the next look (`reconcile`).

Typical use::

    job = launch_training(store, "dpo", DPOConfig(...))        # or launch_job(store, kind, argv, run_dir)
    job = wait_for_job(store, job.id, timeout_s=600)
    job.status, job_progress(job), read_metrics(job)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from datastore.sql import first_row
from datastore.store import Store
from training.config import RecipeConfig
from training.recipes import RECIPES
from training.runs import Run, RunError
from workbench.errors import WorkbenchError
from workbench.processes import create_time, group_alive, liveness, stop_group

ACTIVE = ("queued", "running")
LOG_FILE = "job.log"
QUEUED_TIMEOUT_S = 60.0
"""A job still queued without a process this long after its launch lost its launcher."""

_COLUMNS = (
    "id, kind, status, pid, run_dir, config, error, round_id, created_at, started_at, finished_at, "
    "command, cwd, env, log_path, launch_key, pid_created, exit_code, stop_requested, attempts"
)


class JobError(WorkbenchError):
    """A job cannot be launched, stopped or resumed as asked."""


@dataclass(frozen=True)
class Job:
    """One background job as recorded in the store.

    Attributes:
        id: Job id.
        kind: What it runs, e.g. ``dpo``, ``spo``, ``spm``, ``generate``.
        status: queued | running | finished | failed | stopped.
        pid: The supervisor's pid, which is also the job's process group id.
        run_dir: Folder of the job's files (log, and for training config, metrics, checkpoints).
        command: The real command's argv.
        config: The recipe config (training jobs) or None.
        error: Why it failed: the exit status and the log's last lines.
        exit_code: The command's exit status; negative when a signal killed it.
        log_path: Its stdout and stderr, every attempt appended.
        attempts: 1 plus the number of resumes.
    """

    id: int
    kind: str
    status: str
    pid: int | None
    run_dir: Path | None
    config: dict[str, Any] | None
    error: str | None
    round_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    command: list[str]
    cwd: str | None
    env: dict[str, str]
    log_path: Path | None
    launch_key: str | None
    pid_created: float | None
    exit_code: int | None
    stop_requested: bool
    attempts: int

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.status in ACTIVE

    @classmethod
    def _from_row(cls, row: tuple) -> Job:
        (id_, kind, status, pid, run_dir, config, error, round_id, created, started, finished,
         command, cwd, env, log_path, key, pid_created, exit_code, stop_requested, attempts) = row  # fmt: skip
        return cls(
            id=id_,
            kind=kind,
            status=status,
            pid=pid,
            run_dir=Path(run_dir) if run_dir else None,
            config=json.loads(config) if config else None,
            error=error,
            round_id=round_id,
            created_at=created,
            started_at=started,
            finished_at=finished,
            command=json.loads(command) if command else [],
            cwd=cwd,
            env=json.loads(env) if env else {},
            log_path=Path(log_path) if log_path else None,
            launch_key=key,
            pid_created=pid_created,
            exit_code=exit_code,
            stop_requested=stop_requested,
            attempts=attempts,
        )


def launch_key(kind: str, command: Sequence[str], run_dir: Path | str) -> str:
    """The identity of a launch: the same kind, argv and run folder give the same key."""
    payload = json.dumps([kind, list(command), str(Path(run_dir).resolve())])
    return hashlib.sha256(payload.encode()).hexdigest()


def launch_job(
    store: Store,
    kind: str,
    command: Sequence[str],
    run_dir: Path | str,
    *,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    round_id: int | None = None,
    key: str | None = None,
) -> Job:
    """Starts any command as a background job under a supervisor in its own session.

    The check for an identical active job and the insert of the new row are one transaction, so
    two processes launching the same thing at once get one job and one error.

    Args:
        store: The workbench store that records the job.
        kind: A short name shown in job lists, e.g. ``dpo`` or ``generate``.
        command: The argv to run; it should resume its own work when run again (`resume_job`).
        run_dir: The job's folder, created if missing; its log is ``<run_dir>/job.log``.
        config: JSON-ready settings to record with the job (e.g. a recipe config with ``max_steps``).
        env: Environment variables set on top of the supervisor's own.
        cwd: Working folder of the command (default: the launcher's).
        round_id: The round the job belongs to, if any.
        key: Launch identity (default: `launch_key` of kind, command and run folder).

    Returns:
        The job, running (or already ended, for a very short command).

    Raises:
        JobError: An identical job is queued or running, or the supervisor could not start.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOG_FILE).touch()  # readers may look before the supervisor writes
    key = key or launch_key(kind, command, run_dir)
    with store.write() as con:
        clash = first_row(
            con, "SELECT id, status FROM jobs WHERE launch_key = ? AND status IN ('queued', 'running')", [key]
        )
        if clash:
            raise JobError(
                f"job {clash[0]} runs the same {kind} command on {run_dir} and is {clash[1]}; "
                f"wait for it or stop it (workbench jobs stop {clash[0]})"
            )
        job_id = first_row(
            con,
            "INSERT INTO jobs (kind, status, run_dir, config, round_id, command, cwd, env, log_path, "
            "launch_key, queued_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp) RETURNING id",
            [
                kind,
                str(run_dir),
                json.dumps(config) if config is not None else None,
                round_id,
                json.dumps(list(command)),
                str(Path(cwd or os.getcwd()).resolve()),
                json.dumps(env or {}),
                str(run_dir / LOG_FILE),
                key,
            ],
        )[0]
    return _spawn(store, job_id)


def training_command(recipe: str, config_file: Path, accelerate_config: Path | None = None) -> list[str]:
    """``accelerate launch`` of a recipe module: with an accelerate config file, or one process."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config is None:
        # One process on whatever device there is, without accelerate's warnings about defaults.
        command += [
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    else:
        command += ["--config_file", str(accelerate_config)]
    return command + ["-m", RECIPES[recipe].module, "--config", str(config_file)]


def launch_training(
    store: Store,
    recipe: str,
    cfg: RecipeConfig,
    *,
    accelerate_config: Path | str | None = None,
    round_id: int | None = None,
) -> Job:
    """Launches a training recipe as a job on ``cfg.output_dir`` through ``accelerate launch``.

    The config is written to ``<output_dir>/config.json`` (the file the recipe itself keeps), so
    the same folder resumes from its latest checkpoint when the job is resumed or launched again.

    Args:
        store: The workbench store.
        recipe: ``dpo``, ``spo`` or ``spm``.
        cfg: The recipe's config; its ``output_dir`` is the run folder.
        accelerate_config: An ``accelerate config`` file (several GPUs, nodes, DeepSpeed...);
            None runs one process on the first GPU, or the CPU.
        round_id: The round the job belongs to, if any.

    Raises:
        JobError: The run folder holds another config, the accelerate config file is missing,
            or the same recipe and config is already queued or running.
    """
    if recipe not in RECIPES or not isinstance(cfg, RECIPES[recipe].config_class):
        raise JobError(f"recipe must be one of {', '.join(RECIPES)} with its config, got {recipe!r}")
    accelerate_file = Path(accelerate_config).resolve() if accelerate_config else None
    if accelerate_file is not None and not accelerate_file.is_file():
        raise JobError(f"accelerate config file {accelerate_file} does not exist")
    config = cfg.to_dict()
    try:
        run = Run.start(Path(cfg.output_dir).resolve(), config)
    except RunError as e:
        raise JobError(str(e)) from e
    command = training_command(recipe, run.config_file, accelerate_file)
    return launch_job(store, recipe, command, run.path, config=config, round_id=round_id, key=training_key(recipe, cfg))


def launch_generation(store: Store, args: Sequence[str], run_dir: Path | str | None = None) -> Job:
    """Runs ``workbench generate ARGS`` on this store as a job (default folder ``runs/generate-<time>``)."""
    workbench = Path(sys.executable).with_name("workbench")
    run_dir = run_dir or store.runs_dir / datetime.now().strftime("generate-%Y%m%d-%H%M%S")
    command = [str(workbench), "--home", str(store.home), "generate", *args]
    return launch_job(store, "generate", command, run_dir)


def _spawn(store: Store, job_id: int) -> Job:
    """Starts the supervisor of a queued job and records its pid."""
    command = [sys.executable, "-m", "workbench.supervise", "--home", str(store.home), str(job_id)]
    try:
        process = subprocess.Popen(
            command,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as e:
        finish_job(store, job_id, "failed", error=f"could not start the job's supervisor: {e}")
        raise JobError(f"could not start job {job_id}: {e}") from e
    # Reap the supervisor when it ends while this process lives; once it is gone, init does.
    threading.Thread(target=process.wait, daemon=True).start()
    created = create_time(process.pid)
    with store.write() as con:
        con.execute(
            "UPDATE jobs SET pid = ?, pid_created = ?, started_at = current_timestamp, "
            "status = CASE WHEN status = 'queued' THEN 'running' ELSE status END WHERE id = ?",
            [process.pid, created, job_id],
        )
    return get_job(store, job_id, check=False)


def finish_job(
    store: Store, job_id: int, status: str, *, error: str | None = None, exit_code: int | None = None
) -> None:
    """Records how an active job ended; a job that already ended keeps its first record."""
    with store.write() as con:
        con.execute(
            "UPDATE jobs SET status = ?, error = ?, exit_code = ?, finished_at = current_timestamp "
            "WHERE id = ? AND status IN ('queued', 'running')",
            [status, error, exit_code, job_id],
        )


def get_job(store: Store, job_id: int, *, check: bool = True) -> Job:
    """One job; with ``check``, a running job whose process is gone is first marked failed.

    Raises:
        JobError: No job has this id.
    """
    if check:
        reconcile(store)
    with store.read() as con:
        row = first_row(con, f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", [job_id])
    if row is None:
        raise JobError(f"no job with id {job_id}")
    return Job._from_row(row)


def list_jobs(store: Store, *, kind: str | None = None, round_id: int | None = None) -> list[Job]:
    """Jobs, newest first, after marking dead running jobs failed (see `reconcile`)."""
    reconcile(store)
    where, params = [], []
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    if round_id is not None:
        where.append("round_id = ?")
        params.append(round_id)
    sql = f"SELECT {_COLUMNS} FROM jobs {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC"
    with store.read() as con:
        return [Job._from_row(row) for row in con.execute(sql, params).fetchall()]


def find_active_job(store: Store, key: str) -> Job | None:
    """The queued or running job with this launch key, if any."""
    with store.read() as con:
        row = first_row(
            con,
            f"SELECT {_COLUMNS} FROM jobs WHERE launch_key = ? AND status IN ('queued', 'running')",
            [key],
        )
    return Job._from_row(row) if row else None


def training_key(recipe: str, cfg: RecipeConfig) -> str:
    """The launch key `launch_training` gives this recipe and config."""
    return hashlib.sha256(json.dumps([recipe, cfg.to_dict()], sort_keys=True).encode()).hexdigest()


def reconcile(store: Store) -> list[int]:
    """Marks failed every active job that can no longer end by itself; returns their ids.

    A running job whose supervisor is gone, or whose pid now belongs to another program, and a
    job queued longer than `QUEUED_TIMEOUT_S` without a process, get an error saying so.
    """
    with store.read() as con:
        rows = con.execute(
            "SELECT id, status, pid, pid_created, attempts, "
            f"queued_at < current_timestamp - INTERVAL {int(QUEUED_TIMEOUT_S)} SECOND "
            "FROM jobs WHERE status IN ('queued', 'running')"
        ).fetchall()
    dead = []
    for job_id, status, pid, created, attempts, stale in rows:
        if status == "queued":
            reason = "its launcher exited before starting it" if stale and pid is None else None
        else:
            reason = liveness(pid, created)
        if reason:
            dead.append((job_id, attempts, f"job {job_id} was {status} but {reason}; resume it to continue"))
    if dead:
        with store.write() as con:
            for job_id, attempts, error in dead:
                con.execute(
                    "UPDATE jobs SET status = 'failed', error = ?, finished_at = current_timestamp "
                    "WHERE id = ? AND attempts = ? AND status IN ('queued', 'running')",
                    [error, job_id, attempts],
                )
    return [job_id for job_id, _, _ in dead]


def stop_job(store: Store, job_id: int, *, grace_s: float = 10.0) -> Job:
    """Stops a job: SIGTERM to its process group, SIGKILL after ``grace_s`` seconds; status stopped.

    Raises:
        JobError: The job is not queued or running.
    """
    job = get_job(store, job_id)
    if not job.active:
        raise JobError(f"job {job_id} is {job.status}, not running")
    with store.write() as con:
        con.execute("UPDATE jobs SET stop_requested = true WHERE id = ?", [job_id])
    if job.pid is not None and liveness(job.pid, job.pid_created) is None:
        stop_group(job.pid, grace_s)
    finish_job(store, job_id, "stopped", error=f"stopped on request after attempt {job.attempts}")
    return get_job(store, job_id, check=False)


def resume_job(store: Store, job_id: int) -> Job:
    """Runs a failed or stopped job's command again in the same run folder (training resumes
    from its latest checkpoint); the log is appended to.

    Raises:
        JobError: The job is active or finished, its old command still runs, or another job with its
            launch key is active.
    """
    job = get_job(store, job_id)
    with store.write() as con:
        row = first_row(con, "SELECT status, launch_key, pid FROM jobs WHERE id = ?", [job_id])
        if row[0] not in ("failed", "stopped"):
            raise JobError(f"job {job_id} is {row[0]}; only a failed or stopped job can be resumed")
        if row[2] is not None and group_alive(row[2]):  # its supervisor died, its command did not
            raise JobError(
                f"job {job_id}'s command still runs in process group {row[2]} although its supervisor is "
                f"gone; end it (kill -- -{row[2]}) before resuming, or two runs would share {job.run_dir}"
            )
        clash = first_row(
            con,
            "SELECT id FROM jobs WHERE launch_key = ? AND id <> ? AND status IN ('queued', 'running')",
            [row[1], job_id],
        )
        if clash:
            raise JobError(f"job {clash[0]} runs the same command on {job.run_dir}; wait for it or stop it")
        con.execute(
            "UPDATE jobs SET status = 'queued', pid = NULL, pid_created = NULL, error = NULL, exit_code = NULL, "
            "stop_requested = false, attempts = attempts + 1, queued_at = current_timestamp, finished_at = NULL "
            "WHERE id = ?",
            [job_id],
        )
    return _spawn(store, job_id)


def wait_for_job(store: Store, job_id: int, *, timeout_s: float = 3600.0, poll_s: float = 0.5) -> Job:
    """Polls until the job has ended and returns it.

    Raises:
        JobError: It is still active after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(store, job_id)
        if not job.active:
            return job
        if time.monotonic() > deadline:
            raise JobError(f"job {job_id} is still {job.status} after {timeout_s:g} s")
        time.sleep(poll_s)


def read_metrics(job: Job) -> list[dict[str, float]]:
    """The run folder's metrics (one row per optimizer step, see `training.runs.Run.metrics`); [] if none."""
    return [] if job.run_dir is None else Run.open(job.run_dir).metrics()


@dataclass(frozen=True)
class Progress:
    """Optimizer steps logged out of the config's ``max_steps``."""

    step: int
    max_steps: int

    @property
    def fraction(self) -> float:
        return min(self.step / self.max_steps, 1.0)


def job_progress(job: Job) -> Progress | None:
    """Progress of a training job from its metrics; None for jobs without ``max_steps``."""
    if not job.config or "max_steps" not in job.config:
        return None
    metrics = read_metrics(job)
    return Progress(step=int(metrics[-1]["step"]) if metrics else 0, max_steps=int(job.config["max_steps"]))


def log_tail(job: Job, lines: int = 30, max_chars: int = 4000) -> str:
    """The last lines of the job's log; progress bars redrawn with carriage returns count once."""
    if job.log_path is None or not job.log_path.exists():
        return ""
    path = job.log_path
    with path.open("rb") as f:
        f.seek(max(path.stat().st_size - 64_000, 0))
        text = f.read().decode(errors="replace")
    kept = []
    for line in text.replace("\r\n", "\n").split("\n"):
        redraws = [part for part in line.split("\r") if part.strip()]
        if redraws:
            kept.append(redraws[-1])
    return "\n".join(kept[-lines:])[-max_chars:]
