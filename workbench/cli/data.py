"""Store commands: init, stats, import, export, dataset versions."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from datastore.datasets import (
    DatasetFilters,
    create_dataset_version,
    find_dataset_version,
    list_dataset_versions,
)
from datastore.exports import export_dataset
from datastore.formats import import_pickapic
from datastore.records import store_stats
from datastore.store import Store, StoreConfig
from workbench.cli.common import console, open_store, print_json, print_table, user_errors
from workbench.cli.curation import STEP_JUDGMENTS

import_app = typer.Typer(no_args_is_help=True, help="Import preference data into the store.")
dataset_app = typer.Typer(no_args_is_help=True, help="Build and list dataset versions.")


def init(ctx: typer.Context) -> None:
    """Create the workbench home (DuckDB store, media, datasets, runs, models) or upgrade its schema."""
    with user_errors():
        store = open_store(ctx)
        console.print(f"workbench home ready at {store.home} (schema version {store.schema_version()})")


def stats(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Counts of prompts, images, pairs, judgments, annotators and dataset versions."""
    with user_errors():
        store = open_store(ctx)
        with store.read() as con:
            counts = store_stats(con)
    if as_json:
        print_json(counts)
        return
    for key, value in counts.items():
        console.print(f"{key:>22}: {value}", highlight=False, soft_wrap=True)
    if counts["quarantined_judgments"]:
        console.print(
            f"{counts['quarantined_judgments']} inbox judgments could not be applied: they are in the table "
            "inbox_quarantine with their errors",
            highlight=False,
            soft_wrap=True,
        )


@import_app.command("pickapic")
def import_pickapic_command(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Pick-a-Pic-format Parquet file."),
    max_pixels: int = typer.Option(
        StoreConfig.max_image_pixels, "--max-pixels", help="Largest image (width x height) accepted."
    ),
) -> None:
    """Import a Pick-a-Pic-format Parquet file (caption, jpg_0, jpg_1, label_0, label_1) as pairs + judgments."""
    with user_errors():
        report = import_pickapic(Store.open(ctx.obj.home, StoreConfig(max_image_pixels=max_pixels)), file)
    console.print(
        f"imported {report.rows} rows: {report.pairs} new pairs, {report.judgments} new judgments, "
        f"{report.images} new images, {report.annotators} new annotators"
        + (f"; {report.duplicates} repeated rows skipped" if report.duplicates else ""),
        highlight=False,
        soft_wrap=True,
    )


def export(
    ctx: typer.Context,
    version: str = typer.Argument(..., help="Dataset version id, unique id prefix, or name (newest)."),
    fmt: Literal["pickapic", "jsonl", "hf"] = typer.Option("pickapic", "--format", help="Output format."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
) -> None:
    """Export a dataset version as Pick-a-Pic Parquet, JSONL, or a Hugging Face datasets folder."""
    with user_errors():
        target = export_dataset(find_dataset_version(open_store(ctx), version), fmt, out)
    console.print(f"wrote {target}")


@dataset_app.command("create")
def dataset_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Dataset name (letters, digits, '.', '_', '-')."),
    kinds: list[str] = typer.Option(["final", "step"], "--kind", help="Pair kinds to include."),
    sources: list[str] = typer.Option([], "--source", help="Judgment sources to count (default: all)."),
    min_judgments: int = typer.Option(1, help="Leave out pairs with fewer judgments."),
    min_agreement: float = typer.Option(0.0, help="Leave out pairs with lower agreement with the consensus."),
    ties: bool = typer.Option(True, "--ties/--no-ties", help="Keep pairs whose consensus is a tie."),
    step_judgments: Literal["all", "completion"] = STEP_JUDGMENTS,
) -> None:
    """Snapshot judged pairs with consensus labels as an immutable dataset version."""
    with user_errors():
        filters = DatasetFilters(
            kinds=tuple(kinds),
            sources=tuple(sources),
            min_judgments=min_judgments,
            min_agreement=min_agreement,
            include_ties=ties,
            step_judgments=step_judgments,
        )
        version = create_dataset_version(open_store(ctx), name, filters)
    console.print(f"dataset version {version.id}: {version.n_pairs} pairs, hash {version.content_hash[:16]}")
    console.print(f"  {version.path}")


@dataset_app.command("list")
def dataset_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List dataset versions, newest first."""
    with user_errors():
        versions = list_dataset_versions(open_store(ctx)).to_dicts()
    if as_json:
        print_json(versions)
        return
    print_table(
        [
            {"id": v["id"], "name": v["name"], "pairs": v["n_pairs"], "hash": v["content_hash"][:16],
             "created": f"{v['created_at']:%Y-%m-%d %H:%M:%S}"}
            for v in versions
        ],
        empty="no dataset versions yet: `workbench dataset create NAME` makes one",
    )


def seed(ctx: typer.Context) -> None:
    """Fill an empty home with the shapes world: toy-model pairs, step pools and oracle gold pairs."""
    from workbench.seed import seed_shapes_world  # loads torch and diffusers

    with user_errors():
        report = seed_shapes_world(open_store(ctx))
    if report is None:
        console.print("the store already holds pairs: nothing seeded")
        return
    console.print(
        f"seeded {report.final_pairs} final pairs ({report.gold_pairs} gold) and {report.step_pairs} step pairs"
    )
