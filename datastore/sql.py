"""Small query helpers.

DuckDB 2.0 refuses new work on a connection while a result is only partly fetched, so a
``fetchone()`` on a query that could return more rows would poison the connection. These fetch
the whole (small) result.
"""

from __future__ import annotations

from typing import Any

import duckdb


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple | None:
    """The first row of a query's result, or None when it has no rows."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> Any:
    """The first column of the first row (e.g. a count); None when there are no rows."""
    row = first_row(con, sql, params)
    return None if row is None else row[0]
