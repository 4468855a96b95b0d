"""Helpers shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from datastore.errors import StoreError
from datastore.store import Store
from labeling.errors import LabelingError
from reward_models.base import ScorerError
from workbench.errors import WorkbenchError
from workbench.settings import Settings

console = Console()
err_console = Console(stderr=True)

EXPECTED_ERRORS: tuple[type[Exception], ...] = (StoreError, ScorerError, WorkbenchError, LabelingError)
"""Errors a user can act on: printed as one line, exit code 1, no traceback."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn an expected error into a one-line message and exit code 1."""
    try:
        yield
    except EXPECTED_ERRORS as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e


def open_store(ctx: typer.Context) -> Store:
    settings: Settings = ctx.obj
    return Store.open(settings.home)
