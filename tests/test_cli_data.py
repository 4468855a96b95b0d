"""The store commands end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from workbench.cli import app

runner = CliRunner()


def test_init_import_dataset_export_stats(tmp_path: Path, pickapic_file: Path) -> None:
    home = tmp_path / "home"
    result = runner.invoke(app, ["--home", str(home), "init"])
    assert result.exit_code == 0, result.output
    assert (home / "workbench.duckdb").is_file()

    result = runner.invoke(app, ["--home", str(home), "import", "pickapic", str(pickapic_file)])
    assert result.exit_code == 0, result.output
    assert "12 new pairs, 12 new judgments" in result.output

    result = runner.invoke(app, ["--home", str(home), "dataset", "create", "first", "--no-ties"])
    assert result.exit_code == 0, result.output
    assert "9 pairs" in result.output

    out = tmp_path / "out"
    result = runner.invoke(app, ["--home", str(home), "export", "first", "--format", "pickapic", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (exported,) = out.glob("first-*.parquet")
    assert pq.read_table(exported).num_rows == 9

    result = runner.invoke(app, ["--home", str(home), "stats", "--json"])
    counts = json.loads(result.output)
    assert counts["judgments"] == 12 and counts["pairs"] == 12 and counts["dataset_versions"] == 1


def test_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"")
    result = runner.invoke(app, ["--home", str(home), "import", "pickapic", str(bad)])
    assert result.exit_code == 1
    assert "error:" in result.output and "is empty" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["--home", str(home), "export", "missing", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no dataset version 'missing'" in result.output


def test_home_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "env-home"))
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert (tmp_path / "env-home" / "workbench.duckdb").is_file()
