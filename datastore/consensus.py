"""Consensus: how a pair's judgments become one label.

Two methods, each giving one row per pair (pair_id, consensus a | b | tie, n_judgments, agreement):

- ``majority``: the most frequent of a / b / tie (:func:`majority_consensus`).
- ``dawid_skene``: the Dawid-Skene model (Dawid and Skene 1979), fitted by EM over the outcomes
  a / b / tie. Each annotator gets a 3 x 3 confusion matrix (how often they answer l when the true
  outcome is k), so reliable annotators weigh more than careless or adversarial ones. EM starts
  from the soft majority vote (each pair's vote shares) and is deterministic; gold pairs keep
  their known outcome throughout, which anchors which class is which.

``both_bad`` is not a preference between the two images, so it never enters the EM. With either
method it counts towards a pair's ``n_judgments`` and against its agreement, and pairs judged
mostly ``both_bad`` are left out (``DatasetFilters.include_both_bad=False`` drops these judgments
before anything is counted). Every function takes a judgments frame with the columns of
:func:`datastore.datasets.judgments_frame` (pair_id, annotator, outcome, gold_outcome, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from datastore.errors import StoreError

Method = Literal["majority", "dawid_skene"]
METHODS: tuple[str, ...] = ("majority", "dawid_skene")
CLASSES: tuple[str, ...] = ("a", "b", "tie")
"""The outcomes Dawid-Skene models, in the order of its matrices' rows and columns."""


class ConsensusError(StoreError):
    """A consensus cannot be computed: an unknown method, or no judgment it can use."""


def majority_consensus(judgments: pl.DataFrame) -> pl.DataFrame:
    """Majority vote per pair: columns pair_id, consensus (a | b | tie), n_judgments, agreement.

    The consensus is the most frequent of a / b / tie; an a-b draw is a tie. ``both_bad``
    judgments count towards ``n_judgments`` and never agree with a consensus; pairs judged
    mostly ``both_bad`` are left out. ``agreement`` is the share of judgments equal to the consensus.
    """
    counts = judgments.group_by("pair_id").agg(
        (pl.col("outcome") == "a").sum().alias("n_a"),
        (pl.col("outcome") == "b").sum().alias("n_b"),
        (pl.col("outcome") == "tie").sum().alias("n_tie"),
        (pl.col("outcome") == "both_bad").sum().alias("n_bad"),
        pl.len().alias("n_judgments"),
    )
    consensus = (
        pl.when((pl.col("n_a") > pl.col("n_b")) & (pl.col("n_a") >= pl.col("n_tie")))
        .then(pl.lit("a"))
        .when((pl.col("n_b") > pl.col("n_a")) & (pl.col("n_b") >= pl.col("n_tie")))
        .then(pl.lit("b"))
        .otherwise(pl.lit("tie"))
    )
    return (
        counts.filter(pl.col("n_bad") * 2 <= pl.col("n_judgments"))
        .with_columns(consensus.alias("consensus"))
        .with_columns(
            (
                pl.when(pl.col("consensus") == "a")
                .then(pl.col("n_a"))
                .when(pl.col("consensus") == "b")
                .then(pl.col("n_b"))
                .otherwise(pl.col("n_tie"))
                / pl.col("n_judgments")
            ).alias("agreement")
        )
        .select(
            pl.col("pair_id").cast(pl.Int64),
            "consensus",
            pl.col("n_judgments").cast(pl.Int64),
            pl.col("agreement").cast(pl.Float64),
        )
        .sort("pair_id")
    )


@dataclass(frozen=True)
class DawidSkeneFit:
    """A Dawid-Skene fit.

    Attributes:
        labels: one row per pair: pair_id, consensus (a | b | tie), p_a, p_b, p_tie (posteriors).
        annotators: one row per annotator: annotator, judgments, accuracy (estimated share of
            correct answers: sum over k of prior_k * confusion[k, k]).
        confusion: annotator name -> 3 x 3 matrix, rows = true outcome, columns = answer (a, b, tie).
        priors: outcome -> estimated share of pairs.
        iterations: EM iterations run; converged: whether the posteriors stopped moving.
    """

    labels: pl.DataFrame
    annotators: pl.DataFrame
    confusion: dict[str, np.ndarray]
    priors: dict[str, float]
    iterations: int
    converged: bool


def dawid_skene(
    judgments: pl.DataFrame, *, max_iter: int = 200, tol: float = 1e-8, smoothing: float = 0.01
) -> DawidSkeneFit:
    """Fit Dawid-Skene by EM on the a / b / tie judgments of a judgments frame.

    Args:
        judgments: rows with pair_id, annotator, outcome and gold_outcome (as
            :func:`datastore.datasets.judgments_frame` gives); ``both_bad`` rows are ignored.
        max_iter: EM iterations at most.
        tol: stop when no posterior moves by more than this.
        smoothing: pseudo-count added to every prior and confusion cell, so that no answer
            becomes impossible (log 0) after an annotator's first mistake.
    """
    votes = judgments.filter(pl.col("outcome").is_in(CLASSES))
    if votes.is_empty():
        raise ConsensusError("Dawid-Skene needs at least one a / b / tie judgment")
    pair_ids = np.unique(votes["pair_id"].to_numpy())
    annotators = sorted(set(votes["annotator"].to_list()))
    item = np.searchsorted(pair_ids, votes["pair_id"].to_numpy())
    who = np.array([annotators.index(a) for a in votes["annotator"].to_list()])
    answer = np.array([CLASSES.index(o) for o in votes["outcome"].to_list()])
    n_items, n_annotators, k = len(pair_ids), len(annotators), len(CLASSES)
    counts = np.zeros((n_items, n_annotators, k))
    np.add.at(counts, (item, who, answer), 1.0)

    gold = np.full(n_items, -1)
    for pair_id, outcome in votes.select("pair_id", "gold_outcome").unique().iter_rows():
        if outcome in CLASSES:
            gold[np.searchsorted(pair_ids, pair_id)] = CLASSES.index(outcome)
    anchored = gold >= 0

    def clamp(posterior: np.ndarray) -> np.ndarray:
        posterior[anchored] = np.eye(k)[gold[anchored]]
        return posterior

    posterior = counts.sum(axis=1)
    posterior = clamp(posterior / posterior.sum(axis=1, keepdims=True))
    converged, iterations = False, 0
    while iterations < max_iter and not converged:
        iterations += 1
        # M-step: class priors and each annotator's confusion matrix from the soft labels.
        priors = (posterior.sum(axis=0) + smoothing) / (n_items + k * smoothing)
        confusion = np.einsum("ik,ijl->jkl", posterior, counts) + smoothing
        confusion /= confusion.sum(axis=2, keepdims=True)
        # E-step: posterior of each pair's true outcome given every answer it got.
        log_post = np.log(priors)[None, :] + np.einsum("ijl,jkl->ik", counts, np.log(confusion))
        new = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        new = clamp(new / new.sum(axis=1, keepdims=True))
        converged = float(np.abs(new - posterior).max()) < tol
        posterior = new

    best = posterior.argmax(axis=1)
    # An exact a-b draw is a tie, as in the majority vote.
    draw = np.isclose(posterior[:, 0], posterior[:, 1], rtol=0.0, atol=1e-12) & (best < 2)
    best[draw] = 2
    labels = pl.DataFrame(
        {
            "pair_id": pair_ids.astype(np.int64),
            "consensus": [CLASSES[c] for c in best],
            "p_a": posterior[:, 0],
            "p_b": posterior[:, 1],
            "p_tie": posterior[:, 2],
        }
    )
    accuracy = np.einsum("k,jkk->j", priors, confusion)
    annotator_table = pl.DataFrame(
        {
            "annotator": annotators,
            "judgments": counts.sum(axis=(0, 2)).astype(np.int64),
            "accuracy": accuracy,
        }
    )
    return DawidSkeneFit(
        labels=labels,
        annotators=annotator_table,
        confusion={a: confusion[j] for j, a in enumerate(annotators)},
        priors={c: float(p) for c, p in zip(CLASSES, priors, strict=True)},
        iterations=iterations,
        converged=converged,
    )


def dawid_skene_consensus(judgments: pl.DataFrame) -> pl.DataFrame:
    """Per-pair Dawid-Skene labels in the shape of :func:`majority_consensus`.

    Pairs judged mostly ``both_bad`` are left out; ``n_judgments`` counts every judgment and
    ``agreement`` is the share of them equal to the Dawid-Skene label.
    """
    counted = majority_consensus(judgments).select("pair_id", "n_judgments")
    labels = dawid_skene(judgments).labels.select("pair_id", "consensus")
    agreeing = (
        judgments.join(labels, on="pair_id")
        .group_by("pair_id")
        .agg((pl.col("outcome") == pl.col("consensus")).sum().alias("n_agree"))
    )
    return (
        counted.join(labels, on="pair_id")
        .join(agreeing, on="pair_id")
        .select(
            "pair_id",
            "consensus",
            "n_judgments",
            (pl.col("n_agree") / pl.col("n_judgments")).cast(pl.Float64).alias("agreement"),
        )
        .sort("pair_id")
    )


def consensus(judgments: pl.DataFrame, method: Method) -> pl.DataFrame:
    """Per-pair labels (pair_id, consensus, n_judgments, agreement) by ``method``."""
    if method == "majority":
        return majority_consensus(judgments)
    if method == "dawid_skene":
        return dawid_skene_consensus(judgments)
    raise ConsensusError(f"method must be one of {METHODS}, got {method!r}")
