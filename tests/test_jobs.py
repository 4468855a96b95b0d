"""Background jobs: real supervisors, real `accelerate launch` training, real signals, a real store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny_sd15, tiny_dpo_config, write_snapshot

from datastore.store import Store
from training.config import DPOConfig
from training.dpo import main
from workbench import jobs
from workbench.processes import group_alive

WORKBENCH = str(Path(sys.executable).with_name("workbench"))
LORA_FILE = "final/pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "sd15": build_tiny_sd15(root / "sd15"),
        "snapshot": write_snapshot(root / "snapshot", n_pairs=5, n_ties=1),
    }


def dpo_config(tiny: dict[str, Path], out: Path, **overrides) -> DPOConfig:
    return tiny_dpo_config(tiny["sd15"], tiny["snapshot"], out, **overrides)


def cli(home: Path, *args: str) -> str:
    """Runs `workbench --home HOME ARGS` in a fresh process; returns its output."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "COLUMNS": "200"}
    result = subprocess.run(
        [WORKBENCH, "--home", str(home), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_until(condition, timeout_s: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def group_gone(pgid: int) -> bool:
    return not group_alive(pgid)


def test_dpo_job_finishes_with_metrics_and_an_identical_launch_is_refused(tiny, tmp_path):
    store = Store.open(tmp_path / "home")
    cfg = dpo_config(tiny, store.runs_dir / "dpo-a")
    job = jobs.launch_training(store, "dpo", cfg)
    assert (
        job.status == "running"
        and job.pid is not None
        and job.command[1:3] == ["-m", "accelerate.commands.launch"]
    )
    with pytest.raises(jobs.JobError, match=f"job {job.id} runs the same dpo command .* is (queued|running)"):
        jobs.launch_training(store, "dpo", dpo_config(tiny, store.runs_dir / "dpo-a"))
    job = jobs.wait_for_job(store, job.id, timeout_s=300)
    assert (job.status, job.exit_code, job.error) == ("finished", 0, None), jobs.log_tail(job)
    assert [m["step"] for m in jobs.read_metrics(job)] == [1, 2]
    assert {"loss", "implicit_accuracy", "model_mse_w", "ref_mse_w"} <= jobs.read_metrics(job)[-1].keys()
    assert jobs.job_progress(job) == jobs.Progress(step=2, max_steps=2)
    assert (job.run_dir / LORA_FILE).exists() and "lora: 100%" in job.log_path.read_text()
    assert len(jobs.list_jobs(store)) == 1  # the refused launch left no row
    # Only failed and stopped jobs are resumed.
    with pytest.raises(jobs.JobError, match="is finished; only a failed or stopped job"):
        jobs.resume_job(store, job.id)


def test_a_run_folder_with_another_config_is_refused_before_anything_starts(tiny, tmp_path):
    store = Store.open(tmp_path / "home")
    run = store.runs_dir / "taken"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**dpo_config(tiny, run).to_dict(), "beta": 1.0}))
    with pytest.raises(jobs.JobError, match="started with another config \\(differs in beta\\)"):
        jobs.launch_training(store, "dpo", dpo_config(tiny, run))
    with pytest.raises(jobs.JobError, match="accelerate config file .*missing.yaml does not exist"):
        jobs.launch_training(
            store, "dpo", dpo_config(tiny, tmp_path / "b"), accelerate_config=tmp_path / "missing.yaml"
        )
    assert jobs.list_jobs(store) == []


def test_killed_job_shows_failed_and_resume_ends_with_the_uninterrupted_weights(
    tiny, tmp_path, monkeypatch, one_torch_thread
):
    # Both runs on one thread: with another thread count the sums run in another order, and the
    # weights of equal runs differ by about 1e-6 (`accelerate launch` picks one per physical core).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings = {"max_steps": 30, "checkpoint_every": 5}
    main(dpo_config(tiny, tmp_path / "straight", **settings))

    home = tmp_path / "home"
    Store.open(home)
    cfg = dpo_config(tiny, home / "runs" / "killed", **settings)
    (tmp_path / "killed.json").write_text(json.dumps(cfg.to_dict()))
    assert "job 1: running" in cli(home, "jobs", "launch", "dpo", "--config", str(tmp_path / "killed.json"))
    store = Store.open(home)
    job = jobs.get_job(store, 1)
    wait_until(lambda: any((cfg.output_dir / "checkpoints").glob("step-*")), what="the first checkpoint")
    os.killpg(job.pid, signal.SIGKILL)  # supervisor and training die together: nobody records the end
    wait_until(lambda: group_gone(job.pid), what="the killed group to go")
    assert not (cfg.output_dir / "final").exists()

    shown = cli(home, "jobs", "show", "1")  # a fresh process re-attaches and finds the process gone
    # Gone, or a zombie not reaped yet when the launcher's parent is slow to wait for it.
    assert "job 1 (dpo): failed" in shown
    assert re.search(r"its process \d+ (is gone|has exited without recording how)", shown), shown
    assert jobs.resume_job(store, 1).attempts == 2
    job = jobs.wait_for_job(store, 1, timeout_s=300)
    assert (job.status, job.attempts) == ("finished", 2), job.error
    assert [m["step"] for m in jobs.read_metrics(job)] == list(range(1, 31))
    straight, resumed = load_file(tmp_path / "straight" / LORA_FILE), load_file(cfg.output_dir / LORA_FILE)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0)


def test_stop_terminates_the_group_and_kills_it_after_the_grace_period(tmp_path):
    store = Store.open(tmp_path / "home")
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    polite = "import time; print('ready', flush=True); time.sleep(60)"
    ended = {}
    for name, code in (("stubborn", stubborn), ("polite", polite)):
        job = jobs.launch_job(store, "sleep", [sys.executable, "-c", code], store.runs_dir / name)
        wait_until(lambda job=job: "ready" in job.log_path.read_text(), what="the command to start")
        started = time.monotonic()
        stopped = jobs.stop_job(store, job.id, grace_s=1.0)
        ended[name] = (stopped.status, time.monotonic() - started, stopped.exit_code)
        assert group_gone(job.pid)
    assert ended["stubborn"][0] == "stopped" and ended["stubborn"][1] >= 1.0
    # The polite one ends on SIGTERM, and its supervisor records the signal.
    assert (
        ended["polite"][0] == "stopped" and ended["polite"][1] < 1.0 and ended["polite"][2] == -signal.SIGTERM
    )
    with pytest.raises(jobs.JobError, match="is stopped, not running"):
        jobs.stop_job(store, 1)


def test_failed_command_records_its_exit_status_and_log_tail(tmp_path):
    store = Store.open(tmp_path / "home")
    code = "import sys; print('line one'); print('boom: no dataset', file=sys.stderr); sys.exit(3)"
    job = jobs.wait_for_job(
        store,
        jobs.launch_job(store, "check", [sys.executable, "-c", code], tmp_path / "run").id,
        timeout_s=60,
    )
    assert (job.status, job.exit_code) == ("failed", 3)
    assert job.error.startswith("exited with status 3; last lines of") and job.error.endswith(
        "line one\nboom: no dataset"
    )
    assert jobs.job_progress(job) is None and jobs.read_metrics(job) == []


def test_resume_refuses_while_the_command_of_a_dead_supervisor_still_runs(tmp_path):
    store = Store.open(tmp_path / "home")
    code = "import time; print('ready', flush=True); time.sleep(60)"
    job = jobs.launch_job(store, "sleep", [sys.executable, "-c", code], store.runs_dir / "orphan")
    wait_until(lambda: "ready" in job.log_path.read_text(), what="the command to start")
    os.kill(job.pid, signal.SIGKILL)  # the supervisor only: its child keeps the process group alive
    wait_until(lambda: jobs.get_job(store, job.id).status == "failed", what="the job to be marked failed")
    with pytest.raises(jobs.JobError, match=f"still runs in process group {job.pid}"):
        jobs.resume_job(store, job.id)
    os.killpg(job.pid, signal.SIGKILL)
    wait_until(lambda: group_gone(job.pid), what="the group to end")
    resumed = jobs.resume_job(store, job.id)
    assert resumed.status in ("queued", "running") and resumed.attempts == 2
    jobs.stop_job(store, job.id, grace_s=1.0)


def test_a_running_job_whose_pid_belongs_to_another_program_is_marked_failed(tmp_path):
    store = Store.open(tmp_path / "home")
    with store.write() as con:  # what a store copied from another machine, or a rebooted one, can hold
        con.execute(
            "INSERT INTO jobs (kind, status, pid, pid_created, run_dir, command, launch_key) "
            "VALUES ('dpo', 'running', ?, 12.5, ?, '[]', 'k')",
            [os.getpid(), str(tmp_path / "run")],
        )
    [job] = jobs.list_jobs(store)
    assert job.status == "failed"
    assert f"its process id {os.getpid()} now belongs to another program" in job.error


def test_generation_runs_as_a_job_on_the_store(tmp_path):
    store = Store.open(tmp_path / "home")
    args = ["--toy", "--limit", "1", "--per-prompt", "2", "--num-inference-steps", "2", "--seed", "1"]
    assert jobs.launch_generation(store, args).command[-len(args) - 1 :] == ["generate", *args]
    job = jobs.wait_for_job(store, 1, timeout_s=300)
    assert (job.kind, job.status) == ("generate", "finished"), job.error
    with store.read() as con:
        assert con.execute("SELECT count(*) FROM images").fetchall() == [(2,)]
