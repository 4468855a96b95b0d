"""`workbench curation ...` commands: save, list and build curations; agreement statistics."""

from __future__ import annotations

from typing import Literal

import polars as pl
import typer
from rich.table import Table

from datastore.datasets import DatasetFilters, judgments_frame
from datastore.records import ANNOTATOR_KINDS
from labeling.agreement import agreement_report
from labeling.curation import Curation, build_curation, list_curations, near_duplicate_pairs, save_curation
from workbench.cli.common import console, open_store, print_json, print_table, user_errors

app = typer.Typer(no_args_is_help=True)

def print_frame(title: str, frame: pl.DataFrame) -> None:
    """A polars frame as a rich table (floats to 3 decimals, nulls as '-')."""
    table = Table(*frame.columns, title=title, title_justify="left")
    for row in frame.iter_rows():
        table.add_row(*("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)


def _filters(
    kinds: list[str],
    sources: list[str],
    annotators: str,
    min_ai_margin: float,
    both_bad: bool,
    min_judgments: int = 1,
    min_agreement: float = 0.0,
    ties: bool = True,
    gold: bool = True,
    step_judgments: str = "all",
) -> DatasetFilters:
    return DatasetFilters(
        kinds=tuple(kinds),
        sources=tuple(sources),
        annotator_kinds=ANNOTATOR_KINDS[annotators],
        min_ai_margin=min_ai_margin,
        include_both_bad=both_bad,
        min_judgments=min_judgments,
        min_agreement=min_agreement,
        include_ties=ties,
        include_gold=gold,
        step_judgments=step_judgments,
    )


KINDS = typer.Option(["final", "step"], "--kind", help="Pair kinds to include.")
SOURCES = typer.Option([], "--source", help="Judgment sources to count (default: all).")
ANNOTATORS = typer.Option(
    "both", "--annotators", help="Count judgments of people (human), AI annotators (ai) or both."
)
MARGIN = typer.Option(
    0.0, "--min-ai-margin", help="Leave out AI judgments whose |score_a - score_b| is lower."
)
BOTH_BAD = typer.Option(
    True, "--both-bad/--no-both-bad", help="Count both-bad judgments (they count against agreement)."
)
STEP_JUDGMENTS = typer.Option(
    "all", "--step-judgments", help="Step judgments to count: all, or only those made on completion previews."
)


@app.command()
def save(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Curation name (also the name of the dataset versions it builds)."),
    method: Literal["majority", "dawid_skene"] = typer.Option(
        "majority", "--method", help="Consensus method."
    ),
    kinds: list[str] = KINDS,
    sources: list[str] = SOURCES,
    annotators: Literal["both", "human", "ai"] = ANNOTATORS,
    min_ai_margin: float = MARGIN,
    both_bad: bool = BOTH_BAD,
    min_judgments: int = typer.Option(1, help="Leave out pairs with fewer judgments."),
    min_agreement: float = typer.Option(0.0, help="Leave out pairs with lower agreement with the consensus."),
    ties: bool = typer.Option(True, "--ties/--no-ties", help="Keep pairs whose consensus is a tie."),
    gold: bool = typer.Option(True, "--gold/--no-gold", help="Keep gold pairs."),
    step_judgments: Literal["all", "completion"] = STEP_JUDGMENTS,
    min_gold_accuracy: float = typer.Option(0.0, help="Leave out annotators whose gold accuracy is lower."),
    near_duplicates: int | None = typer.Option(
        None,
        "--near-duplicates",
        help="Leave out pairs whose images' dHashes differ in at most this many bits.",
    ),
    replace: bool = typer.Option(False, "--replace", help="Replace a saved curation of the same name."),
) -> None:
    """Save a curation: a consensus method and filters, built into a dataset version by `build`."""
    with user_errors():
        filters = _filters(
            kinds,
            sources,
            annotators,
            min_ai_margin,
            both_bad,
            min_judgments,
            min_agreement,
            ties,
            gold,
            step_judgments,
        )
        curation = Curation(name, method, filters, min_gold_accuracy, near_duplicates)
        save_curation(open_store(ctx), curation, replace=replace)
    console.print(f"saved curation {name} ({method})", highlight=False)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Saved curations, by name, with the settings that differ from the defaults."""
    with user_errors():
        curations = list_curations(open_store(ctx))
    if as_json:
        print_json([{"name": c.name, "method": c.method, **c.settings()} for c in curations])
        return
    defaults = Curation("default").settings()
    rows = []
    for c in curations:
        settings = c.settings()
        changed = {k: v for k, v in settings["filters"].items() if v != defaults["filters"][k]}
        changed.update({k: v for k, v in settings.items() if k != "filters" and v != defaults[k]})
        rows.append({"name": c.name, "method": c.method, "settings": ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"})
    print_table(rows, empty="no saved curations yet")


@app.command()
def build(ctx: typer.Context, name: str = typer.Argument(..., help="A saved curation.")) -> None:
    """Build a saved curation into a dataset version; prints its id and content hash."""
    with user_errors():
        version = build_curation(open_store(ctx), name)
    console.print(f"dataset version {version.id}: {version.n_pairs} pairs", highlight=False)
    console.print(f"content hash {version.content_hash}", highlight=False)
    console.print(f"  {version.path}", highlight=False)


@app.command()
def agreement(
    ctx: typer.Context,
    kinds: list[str] = KINDS,
    sources: list[str] = SOURCES,
    annotators: Literal["both", "human", "ai"] = ANNOTATORS,
    min_ai_margin: float = MARGIN,
    both_bad: bool = BOTH_BAD,
    bucket_width: int = typer.Option(250, help="Timestep bucket width for step pairs."),
    near_duplicates: int | None = typer.Option(
        None,
        "--near-duplicates",
        help="Also list pairs whose images' dHashes differ in at most this many bits.",
    ),
) -> None:
    """Agreement and data-quality statistics of the judgments the filters count."""
    with user_errors():
        store = open_store(ctx)
        filters = _filters(kinds, sources, annotators, min_ai_margin, both_bad)
        report = agreement_report(store, filters, bucket_width)
        duplicates = None
        if near_duplicates is not None:
            duplicates = near_duplicate_pairs(store, judgments_frame(store, filters), near_duplicates)
    console.print(
        f"{report.judgments} judgments of {report.pairs} pairs by {report.annotators} annotators",
        highlight=False,
    )
    alpha = f"{report.alpha:.3f}" if report.alpha is not None else f"undefined ({report.alpha_note})"
    console.print(f"Krippendorff's alpha: {alpha}", highlight=False)
    print_frame("Cohen's kappa by annotator pair", report.kappa)
    print_frame("Annotator quality", report.quality)
    print_frame("Position bias", report.position_bias)
    print_frame("Human vs AI", report.human_ai)
    print_frame("Tie and both-bad rates", report.outcome_rates)
    print_frame("Agreement by timestep (step pairs)", report.by_timestep)
    if duplicates is not None:
        print_frame("Near-duplicate pairs", duplicates.select("pair_id", "distance"))
