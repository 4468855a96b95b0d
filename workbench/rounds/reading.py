"""Reading rounds as recorded: one round, every round, the per-round table, training metrics and
what a round judged by people still needs. Nothing here loads torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from datastore.sql import first_row
from datastore.store import Store
from training.runs import Run
from workbench.rounds.config import RoundConfig
from workbench.rounds.errors import RoundError


@dataclass(frozen=True)
class RoundSummary:
    """A round as recorded: status, lineage, config and results (see `workbench.rounds`)."""

    id: int
    status: str
    parent_model_id: int
    model_id: int | None
    config: dict
    results: dict
    dataset_version: str | None
    run_dir: str | None
    error: str | None

    def row(self) -> dict[str, Any]:
        """Flat figures for a per-round table: pairs, judgments, training time, win rates."""
        r = self.results
        evaluation = r.get("evaluation", {})
        return {
            "round": self.id,
            "status": self.status,
            "parent": self.parent_model_id,
            "model": self.model_id,
            "pairs": r.get("generation", {}).get("pairs"),
            "judgments": r.get("judgments", {}).get("total"),
            "dataset_pairs": r.get("dataset", {}).get("n_pairs"),
            "train_s": r.get("training", {}).get("seconds"),
            "win_vs_parent": evaluation.get("vs_parent", {}).get("win_rate"),
            "win_vs_base": evaluation.get("vs_base", {}).get("win_rate"),
            "score": evaluation.get("candidate_mean"),
            "human_accuracy": evaluation.get("human", {}).get("accuracy"),
        }


def get_round(store: Store, round_id: int) -> RoundSummary:
    """A round as recorded.

    Raises:
        RoundError: no such round.
    """
    with store.read() as con:
        row = first_row(
            con,
            "SELECT id, status, parent_model_id, model_id, config, results, dataset_version, run_dir, error "
            "FROM rounds WHERE id = ?",
            [round_id],
        )
    if row is None:
        raise RoundError(f"round {round_id} does not exist; `workbench round list` shows the rounds")
    return RoundSummary(
        id=row[0],
        status=row[1],
        parent_model_id=row[2],
        model_id=row[3],
        config=json.loads(row[4] or "{}"),
        results=json.loads(row[5] or "{}"),
        dataset_version=row[6],
        run_dir=row[7],
        error=row[8],
    )


def list_rounds(store: Store) -> list[RoundSummary]:
    """Every round, oldest first."""
    with store.read() as con:
        ids = [r[0] for r in con.execute("SELECT id FROM rounds ORDER BY id").fetchall()]
    return [get_round(store, i) for i in ids]


def rounds_table(summaries: list[RoundSummary]) -> pl.DataFrame:
    """One row per round (`RoundSummary.row`)."""
    schema = {
        "round": pl.Int64,
        "status": pl.String,
        "parent": pl.Int64,
        "model": pl.Int64,
        "pairs": pl.Int64,
        "judgments": pl.Int64,
        "dataset_pairs": pl.Int64,
        "train_s": pl.Float64,
        "win_vs_parent": pl.Float64,
        "win_vs_base": pl.Float64,
        "score": pl.Float64,
        "human_accuracy": pl.Float64,
    }
    return pl.DataFrame([s.row() for s in summaries], schema=schema)


def training_metrics(summary: RoundSummary) -> pl.DataFrame:
    """The round's per-step training metrics (``metrics.jsonl`` of its run), empty before training."""
    training = summary.results.get("training", {})
    if "config" not in training:
        return pl.DataFrame()
    return pl.DataFrame(Run.open(training["config"]["output_dir"]).metrics())


def missing_human(con, round_id: int, per_pair: int) -> tuple[int, int]:
    """(human judgments still needed, pairs that need one or more) for a round."""
    missing, pairs = con.execute(
        "SELECT coalesce(sum(? - n), 0), count(*) FROM ("
        "  SELECT p.id, count(j.id) AS n FROM pairs p LEFT JOIN judgments j ON j.pair_id = p.id "
        "  AND NOT j.withdrawn AND j.annotator_id IN (SELECT id FROM annotators WHERE kind = 'human') "
        "  WHERE p.round_id = ? GROUP BY p.id) WHERE n < ?",
        [per_pair, round_id, per_pair],
    ).fetchall()[0]
    return int(missing), int(pairs)


@dataclass(frozen=True)
class HumanNeeds:
    """Where a round judged by people stands.

    Attributes:
        feedback: who judges the round: ``human`` or ``both`` (people and the AI scorer).
        per_pair: human judgments each of the round's pairs needs.
        missing: human judgments still needed; pairs: the round's pairs that need one or more.
        by_annotator: human judgments given on the round's pairs so far, by annotator name.
        ai: AI judgments of the round's pairs.
    """

    feedback: str
    per_pair: int
    missing: int
    pairs: int
    by_annotator: dict[str, int]
    ai: int


def human_needs(store: Store, round_id: int) -> HumanNeeds:
    """How many human judgments a round still needs, and who gave the ones it has.

    Raises:
        RoundError: no such round, or a round judged by the AI scorer alone.
    """
    summary = get_round(store, round_id)
    config = RoundConfig.from_dict(summary.config)
    if config.feedback == "ai":
        raise RoundError(f"round {round_id} is judged by the AI scorer alone; it needs no people")
    with store.read() as con:
        missing, pairs = missing_human(con, round_id, config.human_judgments_per_pair)
        rows = con.execute(
            "SELECT a.name, a.kind, count(*) FROM judgments j JOIN annotators a ON a.id = j.annotator_id "
            "JOIN pairs p ON p.id = j.pair_id WHERE p.round_id = ? AND NOT j.withdrawn "
            "GROUP BY a.name, a.kind ORDER BY count(*) DESC, a.name",
            [round_id],
        ).fetchall()
    return HumanNeeds(
        feedback=config.feedback,
        per_pair=config.human_judgments_per_pair,
        missing=missing,
        pairs=pairs,
        by_annotator={name: n for name, kind, n in rows if kind == "human"},
        ai=sum(n for _, kind, n in rows if kind == "ai"),
    )
