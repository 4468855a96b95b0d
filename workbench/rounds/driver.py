"""Running rounds: create a round and run its stages in order, resume one where it stopped, chain
AI-feedback rounds, and launch either as a background job.

Each stage's record goes into the round's ``results`` as soon as the stage is done, so that
re-running a round continues where it stopped and never redoes a finished stage. One process at a
time runs a round's stages (`round_lock`).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from datastore.atomic import write_text
from datastore.errors import StoreBusyError
from datastore.lock import file_lock
from datastore.records import register_model
from datastore.sql import first_row, scalar
from datastore.store import Store
from labeling.errors import LabelingError
from labeling.queue import QueueConfig
from workbench.jobs import Job, launch_job
from workbench.rounds import collect, evaluate, train
from workbench.rounds.config import RoundConfig
from workbench.rounds.context import RoundContext
from workbench.rounds.errors import RoundError, RoundWaiting
from workbench.rounds.reading import RoundSummary, get_round, human_needs
from workbench.toy import TOY_MODEL_DIR

STAGES: dict[str, Callable[[RoundContext], dict]] = {
    "generation": collect.generation,
    "judgments": collect.judgments,
    "dataset": collect.dataset,
    "training": train.training,
    "checkpoint": train.checkpoint,
    "evaluation": evaluate.evaluation,
    "register": train.register,
}
"""A round's stages in the order they run, each recorded under its name in the round's results."""

BASE_MODEL_NAME = "toy"
"""Name under which the shipped toy model is registered as the base of a home that has none."""


def ensure_base_model(store: Store) -> int:
    """The id of the home's base model: the shipped toy model, registered as ``toy`` if missing.

    A ``toy`` row that names another folder (the home was made by a checkout that has moved, or
    by another clone) is pointed at this checkout's toy model, so that its rounds' lineage still
    loads.
    """
    toy = str(TOY_MODEL_DIR)
    with store.write() as con:
        known = scalar(con, "SELECT min(id) FROM models WHERE path = ? AND kind = 'base'", [toy])
        if known:
            return known
        row = first_row(con, "SELECT id FROM models WHERE name = ? AND kind = 'base'", [BASE_MODEL_NAME])
        if row is None:
            return register_model(con, BASE_MODEL_NAME, toy, kind="base")
        con.execute("UPDATE models SET path = ? WHERE id = ?", [toy, row[0]])
        return row[0]


def run_round(
    store: Store, config: RoundConfig, parent_model_id: int | None = None, *, progress: bool = False
) -> RoundSummary:
    """Creates a round from ``parent_model_id`` (default: the base model) and runs it to the end.

    Raises:
        RoundWaiting: the round needs human judgments first (`resume_round` continues it).
        RoundError: bad settings or an unknown parent; other errors of a stage mark the round failed.
    """
    check_judgeable(store, config)
    parent = ensure_base_model(store) if parent_model_id is None else parent_model_id
    with store.write() as con:
        kind = scalar(con, "SELECT kind FROM models WHERE id = ?", [parent])
        if kind not in ("base", "full", "lora"):
            raise RoundError(
                f"parent model {parent} is not a text-to-image checkpoint registered in this home"
                + (f" (it is a {kind})" if kind else "")
            )
        round_id = scalar(
            con,
            "INSERT INTO rounds (parent_model_id, status, config, results) VALUES (?, 'created', ?, '{}') RETURNING id",
            [parent, json.dumps(config.to_dict())],
        )
    return resume_round(store, round_id, progress=progress)


def check_judgeable(store: Store, config: RoundConfig) -> None:
    """Refuses a round that asks people for more judgments per pair than the annotation queue hands out.

    Raises:
        RoundError: ``human_judgments_per_pair`` is above the queue's ``overlap`` (the round would
            wait forever), or this home's ``labeling.toml`` is invalid.
    """
    if config.feedback not in ("human", "both"):
        return
    try:
        overlap = QueueConfig.from_home(store.home).overlap
    except LabelingError as e:
        raise RoundError(str(e)) from e
    if config.human_judgments_per_pair > overlap:
        raise RoundError(
            f"the round asks for {config.human_judgments_per_pair} human judgments per pair, but the annotation "
            f"queue stops handing a pair out once {overlap} people judged it (overlap in "
            f"{store.home / 'labeling.toml'}): lower human_judgments_per_pair or raise overlap"
        )


def run_auto(
    store: Store,
    config: RoundConfig,
    rounds: int,
    parent_model_id: int | None = None,
    *,
    progress: bool = False,
    on_round: Callable[[RoundSummary], None] | None = None,
) -> list[RoundSummary]:
    """Runs ``rounds`` AI-feedback rounds, each round's checkpoint the parent of the next."""
    if config.feedback != "ai":
        raise RoundError(f"automatic rounds need feedback 'ai' (no person waits), got {config.feedback!r}")
    if rounds < 1:
        raise RoundError(f"rounds must be >= 1, got {rounds}")
    done: list[RoundSummary] = []
    parent = parent_model_id
    for _ in range(rounds):
        summary = run_round(store, config, parent, progress=progress)
        done.append(summary)
        if on_round is not None:
            on_round(summary)
        parent = summary.model_id
    return done


def resume_round(store: Store, round_id: int, *, progress: bool = False) -> RoundSummary:
    """Runs a round's remaining stages with its stored config; a finished round is returned as it is.

    Raises:
        RoundError: another process is running or resuming this round.
    """
    get_round(store, round_id)  # a round that does not exist is named as such
    ensure_base_model(store)  # its lineage's root may have been registered by a moved checkout
    with round_lock(store, round_id):
        return _resume(store, round_id, progress)


@contextmanager
def round_lock(store: Store, round_id: int) -> Iterator[None]:
    """Held while a process runs a round's stages; the kernel drops it when that process dies.

    Raises:
        RoundError: another process holds it.
    """
    held = ExitStack()
    try:
        held.enter_context(
            file_lock(store.runs_dir / f".round-{round_id}.lock", exclusive=True, timeout_s=0.0)
        )
    except StoreBusyError:
        raise RoundError(
            f"round {round_id} is already running in another process: wait for it to finish or fail "
            "(`workbench round list` shows its status), then resume it"
        ) from None
    with held:
        yield


def _resume(store: Store, round_id: int, progress: bool) -> RoundSummary:
    summary = get_round(store, round_id)
    if summary.status == "finished":
        return summary
    ctx = RoundContext(
        store=store,
        round_id=round_id,
        parent_model_id=summary.parent_model_id,
        config=RoundConfig.from_dict(summary.config),
        results=dict(summary.results),
        progress=progress,
    )
    results = ctx.results
    _update(store, round_id, status="running", started_at=True, error=None)
    try:
        for name, stage in STAGES.items():
            if name in results:
                continue
            _update(store, round_id, status=name)
            started, started_cpu = time.perf_counter(), time.process_time()
            results[name] = stage(ctx)
            results.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 2)
            # CPU seconds of this process: the compute a stage used, undisturbed by other load.
            results.setdefault("cpu_seconds", {})[name] = round(time.process_time() - started_cpu, 2)
            _update(store, round_id, results=results)
    except RoundWaiting:
        _update(store, round_id, status="awaiting_judgments", results=results)
        raise
    except BaseException as e:
        _update(store, round_id, status="failed", error=f"{type(e).__name__}: {e}", results=results)
        raise
    _update(store, round_id, status="finished", finished_at=True)
    return get_round(store, round_id)


def _update(
    store: Store, round_id: int, *, started_at: bool = False, finished_at: bool = False, **columns: Any
) -> None:
    sets, params = [], []
    for name, value in columns.items():
        sets.append(f"{name} = ?")
        params.append(json.dumps(value) if name == "results" else value)
    if started_at:
        sets.append("started_at = coalesce(started_at, current_timestamp)")
    if finished_at:
        sets.append("finished_at = current_timestamp")
    with store.write() as con:
        con.execute(f"UPDATE rounds SET {', '.join(sets)} WHERE id = ?", [*params, round_id])


def _workbench_command(store: Store, *args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("workbench")), "--home", str(store.home), "round", *args]


def launch_round(
    store: Store, config: RoundConfig, parent_model_id: int | None = None, rounds: int = 1
) -> Job:
    """Runs `workbench round run` with this config as a background job (see `workbench.jobs`).

    Raises:
        RoundError: the round could never finish (`check_judgeable`).
    """
    check_judgeable(store, config)
    run_dir = store.runs_dir / datetime.now().strftime("round-job-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "round_config.json"
    write_text(config_file, json.dumps(config.to_dict(), indent=2))
    command = _workbench_command(store, "run", "--config", str(config_file), "--threads", "1")
    if parent_model_id is not None:
        command += ["--parent", str(parent_model_id)]
    if rounds > 1:
        command += ["--auto", "--rounds", str(rounds)]
    key = hashlib.sha256(
        json.dumps([config.to_dict(), parent_model_id, rounds], sort_keys=True).encode()
    ).hexdigest()
    return launch_job(store, "round", command, run_dir, config=config.to_dict(), key=key)


def continue_round(store: Store, round_id: int) -> Job:
    """Runs `workbench round resume` of a round that waited for people, as a background job.

    Raises:
        RoundError: no such round, or it still needs human judgments.
    """
    needs = human_needs(store, round_id)
    if needs.missing:
        raise RoundError(
            f"round {round_id} still needs {needs.missing} human judgments on {needs.pairs} pairs"
        )
    run_dir = store.runs_dir / f"round-{round_id}-resume"
    return launch_job(
        store, "round", _workbench_command(store, "resume", str(round_id)), run_dir, round_id=round_id
    )
