"""AI feedback: judge pending pairs with a scorer and record the judgments (source ``ai``).

Each scorer version is one AI annotator, named ``<scorer name>@<version>``, so judgments of
different weights stay apart and a second run of the same version judges only what is new.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from datastore.records import NewJudgment, ensure_annotator, insert_judgments
from datastore.sql import scalar
from datastore.store import Store
from labeling.answers import now
from labeling.errors import LabelingError
from labeling.queue import check_kinds
from reward_models.base import Scorer, ScorerError


def ai_annotator_name(scorer: Scorer) -> str:
    """The annotator name of a scorer version, e.g. ``shapes-oracle@1``."""
    return f"{scorer.name}@{scorer.version}"


@dataclass(frozen=True)
class AiLabelReport:
    """What one :func:`label_with_scorer` run did.

    Attributes:
        annotator: the AI annotator's name.
        judged: judgments written, by pair kind in ``by_kind``.
        ties: of those, ties (score difference within the tie margin).
        already_judged: pairs of the asked kinds this scorer version had judged before the run.
    """

    annotator: str
    judged: int
    ties: int
    by_kind: dict[str, int]
    already_judged: int


_PENDING = """
SELECT p.id, p.timestep, p.gold_outcome, p.prompt, p.path_a, p.path_b
FROM pair_media p
WHERE p.kind = $kind {round_clause}
  AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = p.id AND j.annotator_id = $annotator)
ORDER BY p.id
LIMIT $limit
"""


def label_with_scorer(
    store: Store,
    scorer: Scorer,
    *,
    kinds: Sequence[str] = ("final", "step"),
    limit: int | None = None,
    tie_margin: float = 0.0,
    batch_size: int = 64,
    round_id: int | None = None,
    show_progress: bool = False,
) -> AiLabelReport:
    """Judge the pairs this scorer version has not judged yet, and record the judgments.

    Both images of a pair are scored against its prompt; step pairs pass their timestep to the
    scorer (a step-aware scorer uses it, others ignore it). The higher score wins; a difference
    of at most ``tie_margin`` is a tie. Each batch is written in one transaction together with a
    check that no other run judged it meanwhile, so runs may overlap without duplicates.

    Args:
        kinds: pair kinds to judge, ``final`` and/or ``step``, in that order.
        limit: judge at most this many pairs in all; None judges every pending pair.
        tie_margin: largest score difference that still counts as a tie (>= 0).
        batch_size: pairs scored together.
        round_id: judge only this round's pairs; None judges pending pairs of every round.
        show_progress: draw a progress bar.

    Returns:
        What was judged.

    Raises:
        LabelingError: bad arguments, the scorer's name is taken by a person, a step pair has no
            timestep, or the scorer failed on a batch (the pair ids are named).
    """
    kinds = check_kinds(tuple(kinds))
    if tie_margin < 0:
        raise LabelingError(f"tie_margin must be >= 0, got {tie_margin}")
    if limit is not None and limit < 0:
        raise LabelingError(f"limit must be >= 0, got {limit}")
    if batch_size < 1:
        raise LabelingError(f"batch_size must be >= 1, got {batch_size}")
    name = ai_annotator_name(scorer)
    with store.write() as con:
        if scalar(con, "SELECT kind FROM annotators WHERE name = ?", [name]) == "human":
            raise LabelingError(f"the annotator name {name!r} belongs to a person")
        annotator_id = ensure_annotator(con, name, kind="ai", model=scorer.name, version=scorer.version)
    round_clause = "" if round_id is None else "AND p.round_id = $round"
    round_param = {} if round_id is None else {"round": round_id}
    pending_sql = _PENDING.format(round_clause=round_clause)
    with store.read() as con:
        rows = con.execute(
            "SELECT p.kind, count(*) FILTER (WHERE j.pair_id IS NULL), count(j.pair_id) FROM pairs p "
            "LEFT JOIN (SELECT DISTINCT pair_id FROM judgments WHERE annotator_id = $annotator) j "
            f"ON j.pair_id = p.id WHERE list_contains($kinds, p.kind) {round_clause} GROUP BY p.kind",
            {"annotator": annotator_id, "kinds": list(kinds), **round_param},
        ).fetchall()
    pending = sum(row[1] for row in rows)
    already = sum(row[2] for row in rows)
    budget = pending if limit is None else min(limit, pending)
    by_kind = dict.fromkeys(kinds, 0)
    ties = 0
    with tqdm(total=budget, unit="pair", desc=name, disable=not show_progress) as bar:
        for kind in kinds:
            while budget > 0:
                with store.read() as con:
                    batch = con.execute(
                        pending_sql,
                        {
                            "kind": kind,
                            "annotator": annotator_id,
                            "limit": min(batch_size, budget),
                            **round_param,
                        },
                    ).fetchall()
                if not batch:
                    break
                judgments = _judge(store, scorer, kind, batch, annotator_id, tie_margin)
                with store.write() as con:
                    ids = [j.pair_id for j in judgments]
                    done = {
                        row[0]
                        for row in con.execute(
                            "SELECT pair_id FROM judgments WHERE annotator_id = ? AND list_contains(?, pair_id)",
                            [annotator_id, ids],
                        ).fetchall()
                    }
                    fresh = [j for j in judgments if j.pair_id not in done]
                    insert_judgments(con, fresh)
                by_kind[kind] += len(fresh)
                ties += sum(j.outcome == "tie" for j in fresh)
                budget -= len(batch)
                bar.update(len(batch))
    return AiLabelReport(
        annotator=name, judged=sum(by_kind.values()), ties=ties, by_kind=by_kind, already_judged=already
    )


def _judge(
    store: Store, scorer: Scorer, kind: str, batch: list[tuple], annotator_id: int, tie_margin: float
) -> list[NewJudgment]:
    """Score both images of each pair of a batch and turn the scores into judgments."""
    pair_ids = [row[0] for row in batch]
    timesteps = None
    if kind == "step":
        missing = [row[0] for row in batch if row[1] is None]
        if missing:
            raise LabelingError(f"step pairs {missing} have no timestep")
        timesteps = [row[1] for row in batch] * 2
    try:
        images = [store.media.open_image(row[4]) for row in batch] + [
            store.media.open_image(row[5]) for row in batch
        ]
    except OSError as e:
        raise LabelingError(f"cannot read the images of pairs {pair_ids}: {e}") from e
    prompts = [row[3] for row in batch] * 2
    try:
        scores = scorer.score(images, prompts, timesteps)
    except (ScorerError, ValueError) as e:
        raise LabelingError(f"{scorer.name} could not score pairs {pair_ids}: {e}") from e
    if not np.isfinite(scores).all():
        raise LabelingError(f"{scorer.name} gave a non-finite score to one of pairs {pair_ids}")
    answered_at = now()
    judgments = []
    for row, score_a, score_b in zip(batch, scores[: len(batch)], scores[len(batch) :], strict=True):
        if abs(score_a - score_b) <= tie_margin:
            outcome = "tie"
        else:
            outcome = "a" if score_a > score_b else "b"
        judgments.append(
            NewJudgment(
                pair_id=row[0],
                annotator_id=annotator_id,
                source="ai",
                outcome=outcome,
                score_a=float(score_a),
                score_b=float(score_b),
                answered_at=answered_at,
                is_gold=row[2] is not None,
            )
        )
    return judgments
