"""Agreement and data-quality statistics over a judgments frame.

Every statistic is a pure function of a polars frame with the columns of
:func:`datastore.datasets.judgments_frame` (pair_id, annotator, annotator_kind, outcome,
left_image, kind, timestep, ...); :func:`agreement_report` loads one from the store and computes
them all. Outcomes are nominal categories a / b / tie / both_bad. When an annotator judged a pair
more than once, their latest judgment is the one that counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import polars as pl

from datastore.consensus import majority_consensus
from datastore.datasets import DatasetFilters, judgments_frame
from datastore.store import Store
from labeling.errors import LabelingError
from labeling.queue import GoldAccuracy, gold_accuracy


class AgreementUndefined(LabelingError):
    """A statistic has no value on these judgments (no overlap, or no variation); the message says why."""


def latest_per_annotator(judgments: pl.DataFrame) -> pl.DataFrame:
    """One judgment per (pair, annotator): the one with the highest judgment id."""
    return judgments.sort("judgment_id").unique(
        subset=["pair_id", "annotator"], keep="last", maintain_order=True
    )


def krippendorff_alpha(judgments: pl.DataFrame) -> float:
    """Krippendorff's alpha for nominal outcomes; any number of annotators per pair, missing allowed.

    alpha = 1 - D_o / D_e over the coincidence matrix o (Krippendorff 2011, "Computing
    Krippendorff's alpha-reliability", nominal data): with n_uc the judgments of pair u giving
    outcome c and m_u = sum_c n_uc, o_ck = sum_u n_uc (n_uk - [c = k]) / (m_u - 1) over pairs with
    m_u >= 2; n_c = sum_k o_ck, n = sum_c n_c;
    alpha = ((n - 1) sum_c o_cc - sum_c n_c (n_c - 1)) / (n (n - 1) - sum_c n_c (n_c - 1)).

    Raises:
        AgreementUndefined: no pair has two judgments, or every pairable judgment is the same outcome.
    """
    votes = latest_per_annotator(judgments)
    table = votes.pivot(
        on="outcome", index="pair_id", values="annotator", aggregate_function="len"
    ).fill_null(0)
    counts = table.drop("pair_id").to_numpy().astype(float)
    m = counts.sum(axis=1)
    counts, m = counts[m >= 2], m[m >= 2]
    if len(m) == 0:
        raise AgreementUndefined("Krippendorff's alpha needs a pair judged by two or more annotators")
    coincidence = np.einsum("uc,uk->ck", counts / (m - 1)[:, None], counts) - np.diag(
        (counts / (m - 1)[:, None]).sum(0)
    )
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    expected = n * (n - 1) - (n_c * (n_c - 1)).sum()
    if expected == 0:
        raise AgreementUndefined(
            "every pairable judgment gives the same outcome: alpha is undefined without variation"
        )
    return float(((n - 1) * np.trace(coincidence) - (n_c * (n_c - 1)).sum()) / expected)


def cohen_kappa(judgments: pl.DataFrame) -> pl.DataFrame:
    """Cohen's kappa for every pair of annotators over the pairs both judged.

    kappa = (p_o - p_e) / (1 - p_e): p_o the share of common pairs where both gave the same
    outcome, p_e = sum_c p1(c) p2(c) from each annotator's outcome shares on those pairs.
    Annotator pairs with no pair in common are left out; kappa is null when p_e = 1 (both gave
    one and the same outcome throughout).

    Returns:
        annotator_1, annotator_2 (alphabetical), common, observed, expected, kappa.
    """
    votes = latest_per_annotator(judgments).select("pair_id", "annotator", "outcome")
    by_annotator = {
        name: dict(zip(g["pair_id"], g["outcome"], strict=True)) for (name,), g in votes.group_by("annotator")
    }
    rows = []
    for first, second in combinations(sorted(by_annotator), 2):
        common = sorted(by_annotator[first].keys() & by_annotator[second].keys())
        if not common:
            continue
        x = [by_annotator[first][p] for p in common]
        y = [by_annotator[second][p] for p in common]
        observed = sum(a == b for a, b in zip(x, y, strict=True)) / len(common)
        expected = sum((x.count(c) / len(common)) * (y.count(c) / len(common)) for c in set(x) | set(y))
        kappa = None if expected == 1.0 else (observed - expected) / (1.0 - expected)
        rows.append((first, second, len(common), observed, expected, kappa))
    schema = {
        "annotator_1": pl.String,
        "annotator_2": pl.String,
        "common": pl.Int64,
        "observed": pl.Float64,
        "expected": pl.Float64,
        "kappa": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def annotator_quality(
    judgments: pl.DataFrame, consensus: pl.DataFrame, gold: list[GoldAccuracy]
) -> pl.DataFrame:
    """Per annotator: judgments, gold accuracy, and agreement with the consensus.

    ``consensus_agreement`` is the share of the annotator's judgments equal to the pair's
    consensus, over pairs with a consensus and at least two judgments (with one, the annotator
    is the consensus). Gold columns are null for annotators who judged no gold pair.
    """
    votes = latest_per_annotator(judgments)
    shared = consensus.filter(pl.col("n_judgments") >= 2).select("pair_id", "consensus")
    agreement = (
        votes.join(shared, on="pair_id")
        .group_by("annotator")
        .agg(
            pl.len().alias("consensus_pairs"),
            (pl.col("outcome") == pl.col("consensus")).mean().alias("consensus_agreement"),
        )
    )
    gold_frame = pl.DataFrame(
        [(g.annotator, g.judged, g.accuracy) for g in gold],
        schema={"annotator": pl.String, "gold_judged": pl.Int64, "gold_accuracy": pl.Float64},
        orient="row",
    )
    return (
        votes.group_by("annotator", "annotator_kind")
        .agg(pl.len().alias("judgments"))
        .join(gold_frame, on="annotator", how="left")
        .join(agreement, on="annotator", how="left")
        .rename({"annotator_kind": "kind"})
        .sort("annotator")
    )


def position_bias(judgments: pl.DataFrame) -> pl.DataFrame:
    """Per annotator: share of decisive picks (a or b, side known) that were the image shown on the left.

    Returns:
        annotator, decisive, left_picks, left_share (0.5 = no position bias).
    """
    decisive = judgments.filter(pl.col("outcome").is_in(["a", "b"]) & pl.col("left_image").is_not_null())
    return (
        decisive.group_by("annotator")
        .agg(
            pl.len().alias("decisive"), (pl.col("outcome") == pl.col("left_image")).sum().alias("left_picks")
        )
        .with_columns((pl.col("left_picks") / pl.col("decisive")).alias("left_share"))
        .sort("annotator")
    )


def human_ai_agreement(judgments: pl.DataFrame) -> pl.DataFrame:
    """Per AI annotator: how often it matches the human majority vote on pairs people judged.

    Returns:
        annotator, pairs (judged by it and by people, with a human consensus), agreement.
    """
    humans = majority_consensus(judgments.filter(pl.col("annotator_kind") == "human")).select(
        "pair_id", "consensus"
    )
    ai = latest_per_annotator(judgments.filter(pl.col("annotator_kind") == "ai"))
    return (
        ai.join(humans, on="pair_id")
        .group_by("annotator")
        .agg(pl.len().alias("pairs"), (pl.col("outcome") == pl.col("consensus")).mean().alias("agreement"))
        .sort("annotator")
    )


def outcome_rates(judgments: pl.DataFrame) -> pl.DataFrame:
    """Tie and both-bad rates by annotator kind, and over all judgments (kind ``all``).

    Returns:
        kind, judgments, ties, both_bad, tie_rate, both_bad_rate.
    """
    counts = [
        pl.len().alias("judgments"),
        (pl.col("outcome") == "tie").sum().alias("ties"),
        (pl.col("outcome") == "both_bad").sum().alias("both_bad"),
    ]
    by_kind = judgments.group_by(pl.col("annotator_kind").alias("kind")).agg(counts).sort("kind")
    overall = judgments.select(pl.lit("all").alias("kind"), *counts)
    return pl.concat([by_kind, overall], how="vertical_relaxed").with_columns(
        (pl.col("ties") / pl.col("judgments")).alias("tie_rate"),
        (pl.col("both_bad") / pl.col("judgments")).alias("both_bad_rate"),
    )


def pairwise_agreement(judgments: pl.DataFrame) -> float | None:
    """Share of agreeing judgment pairs within pairs: sum_u sum_c n_uc (n_uc - 1) / sum_u m_u (m_u - 1).

    None when no pair has two judgments.
    """
    votes = latest_per_annotator(judgments)
    per_outcome = votes.group_by("pair_id", "outcome").agg(pl.len().alias("n"))
    per_pair = votes.group_by("pair_id").agg(pl.len().alias("m"))
    denominator = int((per_pair["m"] * (per_pair["m"] - 1)).sum())
    if denominator == 0:
        return None
    return int((per_outcome["n"] * (per_outcome["n"] - 1)).sum()) / denominator


def agreement_by_timestep(judgments: pl.DataFrame, bucket_width: int = 250) -> pl.DataFrame:
    """Agreement of step pairs by timestep bucket ``[lo, lo + bucket_width)``.

    Returns:
        bucket (e.g. "250-499"), low, pairs, judgments, pairwise_agreement (see
        :func:`pairwise_agreement`; null without overlap), alpha (null where undefined).
    """
    if bucket_width < 1:
        raise LabelingError(f"bucket_width must be >= 1, got {bucket_width}")
    steps = judgments.filter((pl.col("kind") == "step") & pl.col("timestep").is_not_null())
    steps = steps.with_columns((pl.col("timestep") // bucket_width * bucket_width).alias("low"))
    rows = []
    for (low,), group in steps.sort("low").group_by("low", maintain_order=True):
        try:
            alpha = krippendorff_alpha(group)
        except AgreementUndefined:
            alpha = None
        rows.append(
            (
                f"{low}-{low + bucket_width - 1}",
                low,
                group["pair_id"].n_unique(),
                group.height,
                pairwise_agreement(group),
                alpha,
            )
        )
    schema = {
        "bucket": pl.String,
        "low": pl.Int64,
        "pairs": pl.Int64,
        "judgments": pl.Int64,
        "pairwise_agreement": pl.Float64,
        "alpha": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


@dataclass(frozen=True)
class AgreementReport:
    """Every statistic of one selection of judgments.

    Attributes:
        judgments, pairs, annotators: how much the statistics rest on.
        alpha: Krippendorff's alpha over all pairs, or None with the reason in ``alpha_note``.
        kappa, quality, position_bias, human_ai, outcome_rates, by_timestep: the tables of
            :func:`cohen_kappa`, :func:`annotator_quality`, :func:`position_bias`,
            :func:`human_ai_agreement`, :func:`outcome_rates`, :func:`agreement_by_timestep`.
    """

    judgments: int
    pairs: int
    annotators: int
    alpha: float | None
    alpha_note: str
    kappa: pl.DataFrame
    quality: pl.DataFrame
    position_bias: pl.DataFrame
    human_ai: pl.DataFrame
    outcome_rates: pl.DataFrame
    by_timestep: pl.DataFrame


def agreement_report(
    store: Store, filters: DatasetFilters | None = None, bucket_width: int = 250
) -> AgreementReport:
    """Compute every statistic over the judgments ``filters`` count (default: all of them)."""
    judgments = judgments_frame(store, filters)
    if judgments.is_empty():
        raise AgreementUndefined("no judgment matches the filters")
    try:
        alpha, note = krippendorff_alpha(judgments), ""
    except AgreementUndefined as e:
        alpha, note = None, str(e)
    return AgreementReport(
        judgments=judgments.height,
        pairs=judgments["pair_id"].n_unique(),
        annotators=judgments["annotator"].n_unique(),
        alpha=alpha,
        alpha_note=note,
        kappa=cohen_kappa(judgments),
        quality=annotator_quality(judgments, majority_consensus(judgments), gold_accuracy(store)),
        position_bias=position_bias(judgments),
        human_ai=human_ai_agreement(judgments),
        outcome_rates=outcome_rates(judgments),
        by_timestep=agreement_by_timestep(judgments, bucket_width),
    )
