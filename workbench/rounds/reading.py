"""Reading rounds as recorded: one round, every round, the per-round table, training metrics and
what a round judged by people still needs. Nothing here loads torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb
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


@dataclass(frozen=True)
class ShortPair:
    """A pair of a round that lacks human judgments.

    Attributes:
        needed: human judgments it still needs, from people who have not judged it (the queue
            hands a pair to each person once).
        judged_by: the people who judged it so far, by name.
    """

    pair_id: int
    kind: str
    needed: int
    judged_by: tuple[str, ...]


def short_pairs(con: duckdb.DuckDBPyConnection, round_id: int, per_pair: int) -> list[ShortPair]:
    """The round's pairs with fewer than ``per_pair`` human judgments, by id."""
    rows = con.execute(
        "SELECT p.id, p.kind, list(h.name ORDER BY h.name) FILTER (WHERE h.name IS NOT NULL) FROM pairs p "
        "LEFT JOIN (SELECT j.pair_id, a.name FROM judgments j JOIN annotators a ON a.id = j.annotator_id "
        "  WHERE a.kind = 'human' AND NOT j.withdrawn) h ON h.pair_id = p.id "
        "WHERE p.round_id = ? GROUP BY p.id, p.kind HAVING count(h.name) < ? ORDER BY p.id",
        [round_id, per_pair],
    ).fetchall()
    return [ShortPair(i, kind, per_pair - len(names or ()), tuple(names or ())) for i, kind, names in rows]


def missing_human(con: duckdb.DuckDBPyConnection, round_id: int, per_pair: int) -> tuple[int, int]:
    """(human judgments still needed, pairs that need one or more) for a round."""
    short = short_pairs(con, round_id, per_pair)
    return sum(p.needed for p in short), len(short)


@dataclass(frozen=True)
class HumanNeeds:
    """Where a round judged by people stands. The round names no annotators: any person who has
    not judged a pair yet can give its missing judgments.

    Attributes:
        feedback: who judges the round: ``human`` or ``both`` (people and the AI scorer).
        per_pair: human judgments each of the round's pairs needs.
        short: the round's pairs that need one or more human judgments.
        by_annotator: human judgments given on the round's pairs so far, by annotator name.
        ai: AI judgments of the round's pairs.
        round_pairs: the round's pairs; ai_pairs: those an AI scorer judged (one judgment each in a
            round judged by both; the scorer judges the rest when the round continues).
    """

    feedback: str
    per_pair: int
    short: tuple[ShortPair, ...]
    by_annotator: dict[str, int]
    ai: int
    round_pairs: int
    ai_pairs: int

    @property
    def missing(self) -> int:
        """Human judgments still needed."""
        return sum(p.needed for p in self.short)

    @property
    def pairs(self) -> int:
        """Pairs that need one or more human judgments."""
        return len(self.short)

    def given_table(self) -> pl.DataFrame:
        """Judgments given so far: a row per person, and one for the AI scorer once it judged."""
        rows = [{"annotator": name, "judgments": n} for name, n in self.by_annotator.items()]
        rows += [{"annotator": "AI scorer", "judgments": self.ai}] if self.ai else []
        return pl.DataFrame(rows, schema={"annotator": pl.String, "judgments": pl.Int64})

    def short_table(self) -> pl.DataFrame:
        """A row per pair still short: its id and kind, the human judgments it still needs, who judged it."""
        rows = [(p.pair_id, p.kind, p.needed, ", ".join(p.judged_by)) for p in self.short]
        schema = {"pair": pl.Int64, "kind": pl.String, "still needed": pl.Int64, "judged by": pl.String}
        return pl.DataFrame(rows, schema=schema, orient="row")


def human_needs(store: Store, round_id: int) -> HumanNeeds:
    """How many human judgments a round still needs and on which pairs, who gave the ones it has,
    and the AI scorer's part.

    Raises:
        RoundError: no such round, or a round judged by the AI scorer alone.
    """
    summary = get_round(store, round_id)
    config = RoundConfig.from_dict(summary.config)
    if config.feedback == "ai":
        raise RoundError(f"round {round_id} is judged by the AI scorer alone; it needs no people")
    with store.read() as con:
        short = short_pairs(con, round_id, config.human_judgments_per_pair)
        rows = con.execute(
            "SELECT a.name, a.kind, count(*) FROM judgments j JOIN annotators a ON a.id = j.annotator_id "
            "JOIN pairs p ON p.id = j.pair_id WHERE p.round_id = ? AND NOT j.withdrawn "
            "GROUP BY a.name, a.kind ORDER BY count(*) DESC, a.name",
            [round_id],
        ).fetchall()
        round_pairs, ai_pairs = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM judgments j JOIN annotators a "
            "ON a.id = j.annotator_id WHERE j.pair_id = p.id AND a.kind = 'ai' AND NOT j.withdrawn)) "
            "FROM pairs p WHERE p.round_id = ?",
            [round_id],
        ).fetchall()[0]
    return HumanNeeds(
        feedback=config.feedback,
        per_pair=config.human_judgments_per_pair,
        short=tuple(short),
        by_annotator={name: n for name, kind, n in rows if kind == "human"},
        ai=sum(n for _, kind, n in rows if kind == "ai"),
        round_pairs=round_pairs,
        ai_pairs=ai_pairs,
    )
