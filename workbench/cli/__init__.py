"""The `workbench` command line. Each command is a few lines that call library functions."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.cli import curation, data, generate, jobs, label, labelstudio, rounds, toy, train, users
from workbench.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Preference workbench for text-to-image diffusion models.")


@app.callback()
def main(
    ctx: typer.Context,
    home: Path | None = typer.Option(None, "--home", help="Workbench home folder (default: $WORKBENCH_HOME, else ~/.workbench)."),
) -> None:
    ctx.obj = Settings.from_home(home)


app.command()(data.init)
app.command()(data.seed)
app.command()(data.stats)
app.command()(data.export)
app.command()(generate.generate)
app.add_typer(data.import_app, name="import")
app.add_typer(data.dataset_app, name="dataset")
app.add_typer(toy.app, name="toy", help="Train and evaluate the shapes world's toy text-to-image model.")
app.add_typer(train.app, name="train", help="Train Diffusion-DPO, the step-aware preference model, or SPO.")
app.add_typer(label.app, name="label")
app.add_typer(labelstudio.app, name="labelstudio")
app.command("app")(label.serve)
app.add_typer(rounds.app, name="round", help="Run closed preference rounds: generate, judge, curate, train, evaluate.")
app.command()(rounds.demo)
app.add_typer(jobs.app, name="jobs", help="Background training and generation jobs: list, stop, resume.")
app.add_typer(users.app, name="user", help="People who may sign in to the app, with their roles.")
app.add_typer(curation.app, name="curation", help="Saved curations, consensus and agreement statistics.")
