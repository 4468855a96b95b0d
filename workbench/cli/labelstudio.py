"""Label Studio commands: serve a local server, push pairs as tasks, pull annotations as judgments."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer

from labeling.labelstudio.client import LabelStudioClient
from labeling.labelstudio.server import (
    DEFAULT_PORT,
    DEFAULT_URL,
    LabelStudioServer,
    api_token,
    load_credentials,
)
from labeling.labelstudio.sync import PROJECT_TITLE, pull, push
from workbench.cli.common import console, err_console, open_store, user_errors

app = typer.Typer(
    no_args_is_help=True,
    help="Label Studio for larger teams: run a local server, push pairs as tasks, pull annotations as judgments.",
)

URL_OPTION = typer.Option(DEFAULT_URL, "--url", envvar="LABEL_STUDIO_URL", help="Label Studio server.")
KEY_OPTION = typer.Option(
    None,
    "--api-key",
    envvar="LABEL_STUDIO_API_KEY",
    show_default=False,
    help="API token (default: $LABEL_STUDIO_USER_TOKEN, else the token `serve` saved).",
)
PROJECT_OPTION = typer.Option(PROJECT_TITLE, "--project", help="Project title.")


def _client(url: str, api_key: str | None) -> LabelStudioClient:
    return LabelStudioClient(url, api_key or api_token())


@app.command()
def serve(
    ctx: typer.Context,
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port on 127.0.0.1."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Label Studio's data (default: <home>/labelstudio/data)."
    ),
) -> None:
    """Run Label Studio on 127.0.0.1 in the foreground, showing this home's media; Ctrl-C stops it."""
    with user_errors():
        store = open_store(ctx)
        credentials = load_credentials(create=True)
    server = LabelStudioServer(store.home, credentials, port=port, data_dir=data_dir)
    # A SIGTERM to this command must stop the server too, not orphan it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        console.print("starting Label Studio (about 30 s the first time) ...")
        with user_errors():
            server.start()
        console.print(f"Label Studio at {server.url} (log: {server.log_path})")
        console.print(f"log in as {credentials.username}; {credentials.source}")
        console.print(f"then: workbench labelstudio push --url {server.url}")
        code = server.process.wait()
        err_console.print(
            f"[red]error:[/red] Label Studio exited with code {code}; see {server.log_path}", highlight=False
        )
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping Label Studio")
    finally:
        server.stop()


@app.command("push")
def push_command(
    ctx: typer.Context,
    limit: int | None = typer.Option(
        None, "--limit", min=0, help="Push at most this many pairs (default: all)."
    ),
    scorer: str | None = typer.Option(
        None, "--scorer", help="AI annotator whose judgments go along as suggestions, e.g. shapes-oracle@1."
    ),
    url: str = URL_OPTION,
    api_key: str | None = KEY_OPTION,
    project: str = PROJECT_OPTION,
) -> None:
    """Send the pairs not yet in the project as tasks (sides drawn at random), creating the project if needed."""
    with user_errors():
        report = push(
            open_store(ctx),
            _client(url, api_key),
            project=project,
            limit=limit,
            suggestions_from=scorer,
            show_progress=True,
        )
    console.print(
        f"pushed {report.pushed} pairs to project {report.project_id} at {url} "
        f"({report.suggested} with suggestions); {report.remaining} pairs not pushed yet"
    )


@app.command("pull")
def pull_command(
    ctx: typer.Context, url: str = URL_OPTION, api_key: str | None = KEY_OPTION, project: str = PROJECT_OPTION
) -> None:
    """Merge the project's annotations into judgments: new, edited and deleted ones; safe to repeat."""
    with user_errors():
        report = pull(open_store(ctx), _client(url, api_key), project=project)
    console.print(
        f"judgments: {report.new} new, {report.updated} updated, {report.withdrawn} withdrawn, "
        f"{report.unchanged} unchanged; {report.unanswered} annotations without an answer, "
        f"{report.foreign} on tasks not pushed from this home"
    )
