"""Helpers shared by the CLI commands."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from datastore.errors import StoreError
from datastore.store import Store
from labeling.errors import LabelingError
from reward_models.base import ScorerError
from training.errors import TrainingError
from workbench.errors import WorkbenchError
from workbench.settings import Settings

# soft_wrap: a line of text is never broken by us (the terminal wraps it), so what a command
# prints reads the same at any width; tables are drawn to the width (see print_table).
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    StoreError, ScorerError, WorkbenchError, LabelingError, TrainingError
)
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


def print_json(value: Any) -> None:
    """``value`` as one line of JSON on stdout (dates and paths as strings): what scripts read."""
    typer.echo(json.dumps(value, default=str))


def print_table(rows: Sequence[dict[str, Any]], *, empty: str) -> None:
    """Rows (all with the same keys) as a table when it fits the terminal's width, else as one
    block of ``key: value`` lines per row, so that no value is cut or broken over lines at any
    width. ``empty`` is printed when there are no rows. Scripts use the command's ``--json``."""
    if not rows:
        console.print(empty, highlight=False, markup=False, soft_wrap=True)
        return
    headers = list(rows[0])
    table = Table(box=box.SIMPLE_HEAD)
    for header in headers:
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(*(Text(_cell(row[h])) for h in headers))
    if console.measure(table, options=console.options.update(width=10**6)).maximum <= console.width:
        console.print(table)
        return
    width = max(len(h) for h in headers)
    for i, row in enumerate(rows):
        if i:
            console.print()
        for header in headers:
            console.print(f"{header:>{width}}: {_cell(row[header])}", highlight=False, markup=False, soft_wrap=True)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)
