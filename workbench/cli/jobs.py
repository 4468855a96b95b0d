"""`workbench jobs ...`: background training and generation jobs that outlive the command."""

from __future__ import annotations

from pathlib import Path

import typer

from training.options import ConfigError
from training.recipes import get_recipe
from workbench import jobs
from workbench.cli.common import console, open_store, print_json, print_table, user_errors

app = typer.Typer(no_args_is_help=True)


def _progress(job: jobs.Job) -> str:
    progress = jobs.job_progress(job)
    return "" if progress is None else f"{progress.step}/{progress.max_steps}"


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Jobs, newest first; running jobs whose process is gone are marked failed first."""
    with user_errors():
        found = jobs.list_jobs(open_store(ctx))
    rows = [
        {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "progress": _progress(job),
            "attempts": job.attempts,
            "started": job.started_at.strftime("%Y-%m-%d %H:%M:%S") if job.started_at else "",
            "run folder": str(job.run_dir),
        }
        for job in found
    ]
    if as_json:
        print_json(rows)
    else:
        print_table(rows, empty="no jobs yet")


@app.command()
def show(ctx: typer.Context, job_id: int = typer.Argument(..., help="Job id.")) -> None:
    """A job's status, progress, last metrics and log tail."""
    with user_errors():
        job = jobs.get_job(open_store(ctx), job_id)
    console.print(f"job {job.id} ({job.kind}): {job.status}", highlight=False)
    console.print(
        f"run folder: {job.run_dir}\nlog: {job.log_path}\npid: {job.pid}  attempts: {job.attempts}",
        highlight=False,
    )
    if (progress := _progress(job)) != "":
        console.print(f"progress: {progress} steps", highlight=False)
    if metrics := jobs.read_metrics(job):
        console.print(
            "last metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics[-1].items()), highlight=False
        )
    if job.error:
        console.print(f"error: {job.error}", highlight=False, soft_wrap=True)
    else:
        console.print(jobs.log_tail(job, lines=15), highlight=False, soft_wrap=True)


@app.command()
def stop(
    ctx: typer.Context,
    job_id: int = typer.Argument(..., help="Job id."),
    grace: float = typer.Option(10.0, "--grace", help="Seconds between SIGTERM and SIGKILL."),
) -> None:
    """Stop a job: SIGTERM to its process group, SIGKILL after the grace period."""
    with user_errors():
        job = jobs.stop_job(open_store(ctx), job_id, grace_s=grace)
    console.print(f"job {job.id}: {job.status}")


@app.command()
def resume(ctx: typer.Context, job_id: int = typer.Argument(..., help="Job id.")) -> None:
    """Run a failed or stopped job again in its run folder; training resumes from its latest checkpoint."""
    with user_errors():
        job = jobs.resume_job(open_store(ctx), job_id)
    console.print(f"job {job.id}: {job.status} (attempt {job.attempts}), log {job.log_path}", highlight=False)


@app.command()
def launch(
    ctx: typer.Context,
    recipe: str = typer.Argument(..., help="dpo, spo or spm."),
    config: Path = typer.Option(
        ..., "--config", help="JSON file with the recipe's config (e.g. a run's config.json)."
    ),
    accelerate_config: Path | None = typer.Option(
        None, "--accelerate-config", help="accelerate config file (GPUs, nodes); default: one process."
    ),
) -> None:
    """Launch a training recipe as a background job on the config's output_dir."""
    try:
        config_class = get_recipe(recipe).config_class
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from e
    try:
        cfg = config_class.from_json(config)
    except (ConfigError, OSError, ValueError, TypeError) as e:
        raise typer.BadParameter(f"cannot read {config}: {e}") from e
    with user_errors():
        job = jobs.launch_training(open_store(ctx), recipe, cfg, accelerate_config=accelerate_config)
    console.print(f"job {job.id}: {job.status}, log {job.log_path}", highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def generate(ctx: typer.Context) -> None:
    """Run `workbench generate ARGS` as a background job, e.g. `workbench jobs generate --toy --limit 20`."""
    with user_errors():
        job = jobs.launch_generation(open_store(ctx), ctx.args)
    console.print(f"job {job.id}: {job.status}, log {job.log_path}", highlight=False)
