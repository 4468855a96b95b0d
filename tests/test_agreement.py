"""Agreement statistics on small tables worked out by hand."""

from __future__ import annotations

import polars as pl
import pytest

from datastore.consensus import majority_consensus
from labeling.agreement import (
    AgreementUndefined,
    agreement_by_timestep,
    annotator_quality,
    cohen_kappa,
    human_ai_agreement,
    krippendorff_alpha,
    outcome_rates,
    pairwise_agreement,
    position_bias,
)
from labeling.queue import GoldAccuracy


def frame(rows: list[tuple], **extra: list) -> pl.DataFrame:
    """(pair_id, annotator, outcome) rows as a judgments frame; judgment ids in row order."""
    data = {
        "judgment_id": list(range(1, len(rows) + 1)),
        "pair_id": [r[0] for r in rows],
        "annotator": [r[1] for r in rows],
        "outcome": [r[2] for r in rows],
        "annotator_kind": ["human"] * len(rows),
        "left_image": [None] * len(rows),
        "kind": ["final"] * len(rows),
        "timestep": [None] * len(rows),
    }
    data.update(extra)
    return pl.DataFrame(data, schema_overrides={"left_image": pl.String, "timestep": pl.Int64})


# pair 1: x=a y=a z=a | pair 2: x=a y=b | pair 3: x=b y=b z=tie | pair 4: x=tie (alone: not pairable)
TABLE = frame(
    [
        (1, "x", "a"), (1, "y", "a"), (1, "z", "a"),
        (2, "x", "a"), (2, "y", "b"),
        (3, "x", "b"), (3, "y", "b"), (3, "z", "tie"),
        (4, "x", "tie"),
    ]
)  # fmt: skip


def test_krippendorff_alpha_by_hand() -> None:
    # Coincidence matrix, o_ck = sum_u n_uc (n_uk - [c=k]) / (m_u - 1):
    #   pair 1 (a,a,a), m=3: o_aa += 3*2/2 = 3
    #   pair 2 (a,b),   m=2: o_ab += 1, o_ba += 1
    #   pair 3 (b,b,tie), m=3: o_bb += 2*1/2 = 1, o_b,tie += 2*1/2 = 1, o_tie,b += 1
    #   pair 4 has one value: not pairable.
    #          a  b  tie  | n_c
    #     a    3  1  0    | 4
    #     b    1  1  1    | 3
    #     tie  0  1  0    | 1        n = 8, sum o_cc = 4, sum n_c (n_c - 1) = 12 + 6 + 0 = 18
    # alpha = ((n-1) sum o_cc - sum n_c(n_c-1)) / (n(n-1) - sum n_c(n_c-1)) = (7*4 - 18) / (56 - 18) = 10/38
    assert krippendorff_alpha(TABLE) == pytest.approx(10 / 38)


def test_cohen_kappa_by_hand() -> None:
    # x-y over pairs 1,2,3: x = a,a,b; y = a,b,b. p_o = 2/3; p_e = (2/3)(1/3) + (1/3)(2/3) = 4/9;
    #   kappa = (2/3 - 4/9) / (1 - 4/9) = (2/9) / (5/9) = 0.4
    # x-z over pairs 1,3: x = a,b; z = a,tie. p_o = 1/2; p_e = (1/2)(1/2) = 1/4; kappa = (1/4)/(3/4) = 1/3
    # y-z over pairs 1,3: y = a,b; z = a,tie: the same 1/3.
    kappa = cohen_kappa(TABLE)
    assert kappa.select("annotator_1", "annotator_2", "common").rows() == [
        ("x", "y", 3),
        ("x", "z", 2),
        ("y", "z", 2),
    ]
    assert kappa["observed"].to_list() == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert kappa["expected"].to_list() == pytest.approx([4 / 9, 1 / 4, 1 / 4])
    assert kappa["kappa"].to_list() == pytest.approx([0.4, 1 / 3, 1 / 3])


def test_edge_cases_give_values_or_clear_errors() -> None:
    single = frame([(1, "x", "a"), (2, "x", "b")])
    with pytest.raises(AgreementUndefined, match="needs a pair judged by two or more"):
        krippendorff_alpha(single)
    assert cohen_kappa(single).is_empty()
    assert pairwise_agreement(single) is None

    perfect = frame([(1, "x", "a"), (1, "y", "a"), (2, "x", "b"), (2, "y", "b")])
    assert krippendorff_alpha(perfect) == 1.0
    assert cohen_kappa(perfect)["kappa"].to_list() == [1.0]
    assert pairwise_agreement(perfect) == 1.0

    one_outcome = frame([(1, "x", "a"), (1, "y", "a"), (2, "x", "a"), (2, "y", "a")])
    with pytest.raises(AgreementUndefined, match="without variation"):
        krippendorff_alpha(one_outcome)
    # p_e = 1: kappa is null, not NaN.
    assert cohen_kappa(one_outcome)["kappa"].to_list() == [None]

    no_overlap = frame([(1, "x", "a"), (2, "y", "b")])
    assert cohen_kappa(no_overlap).is_empty()
    with pytest.raises(AgreementUndefined):
        krippendorff_alpha(no_overlap)

    # A second judgment of the same pair by the same person replaces the first.
    redone = frame([(1, "x", "b"), (1, "y", "a"), (1, "x", "a"), (2, "x", "b"), (2, "y", "b")])
    assert krippendorff_alpha(redone) == 1.0


def test_position_bias_and_outcome_rates() -> None:
    # x picks the left image 3 times out of 3 decisive answers (the tie and the unknown side don't count);
    # y picks left once out of 2.
    judgments = frame(
        [
            (1, "x", "a"),
            (2, "x", "b"),
            (3, "x", "a"),
            (4, "x", "tie"),
            (5, "x", "a"),
            (1, "y", "b"),
            (2, "y", "b"),
            (3, "y", "both_bad"),
        ],
        left_image=["a", "b", "a", "a", None, "a", "b", "a"],
        annotator_kind=["human"] * 5 + ["ai"] * 3,
    )
    bias = position_bias(judgments)
    assert bias.rows() == [("x", 3, 3, 1.0), ("y", 2, 1, 0.5)]
    rates = outcome_rates(judgments)
    # ai: 3 judgments, 0 ties, 1 both_bad; human: 5, 1 tie, 0 both_bad; all: 8, 1, 1.
    assert rates.select("kind", "judgments", "ties", "both_bad").rows() == [
        ("ai", 3, 0, 1),
        ("human", 5, 1, 0),
        ("all", 8, 1, 1),
    ]
    assert rates["tie_rate"].to_list() == pytest.approx([0.0, 0.2, 1 / 8])
    assert rates["both_bad_rate"].to_list() == pytest.approx([1 / 3, 0.0, 1 / 8])


def test_quality_and_human_vs_ai() -> None:
    # Human majority: pair 1 a (2 of 2), pair 2 b (b, b, a), pair 3 tie (a-b draw).
    judgments = frame(
        [
            (1, "h1", "a"), (1, "h2", "a"), (1, "bot", "a"),
            (2, "h1", "b"), (2, "h2", "b"), (2, "h3", "a"), (2, "bot", "a"),
            (3, "h1", "a"), (3, "h2", "b"), (3, "bot", "b"),
        ],
        annotator_kind=["human", "human", "ai", "human", "human", "human", "ai", "human", "human", "ai"],
    )  # fmt: skip
    # bot vs the human majority: pair 1 a = a, pair 2 a != b, pair 3 b != tie: 1 of 3.
    assert human_ai_agreement(judgments).rows() == [("bot", 3, pytest.approx(1 / 3))]
    # Consensus over everyone: pair 1 a; pair 2 b (2 b vs 2 a: a draw, so a tie); pair 3 b (2 of 3).
    consensus = majority_consensus(judgments)
    assert consensus["consensus"].to_list() == ["a", "tie", "b"]
    gold = [GoldAccuracy("h1", "human", 4, 3)]
    quality = annotator_quality(judgments, consensus, gold)
    # h1: a=a, b!=tie, a!=b -> 1/3; h2: a, b!=tie, b=b -> 2/3; h3: a!=tie -> 0; bot: a, a!=tie, b -> 2/3.
    assert quality.select("annotator", "kind", "judgments", "gold_judged").rows() == [
        ("bot", "ai", 3, None),
        ("h1", "human", 3, 4),
        ("h2", "human", 3, None),
        ("h3", "human", 1, None),
    ]
    assert quality["gold_accuracy"].to_list() == [None, 0.75, None, None]
    assert quality["consensus_agreement"].to_list() == pytest.approx([2 / 3, 1 / 3, 2 / 3, 0.0])


def test_agreement_by_timestep_bucket() -> None:
    # Bucket 0-249: pair 1 (t=100: a,a) and pair 2 (t=200: a,b): agreeing judgment pairs 2 of 4 -> 0.5.
    # Bucket 500-749: pair 3 (t=600: b,b): 1.0, alpha undefined (one outcome). The final pair is ignored.
    judgments = frame(
        [
            (1, "x", "a"),
            (1, "y", "a"),
            (2, "x", "a"),
            (2, "y", "b"),
            (3, "x", "b"),
            (3, "y", "b"),
            (4, "x", "a"),
        ],
        kind=["step"] * 6 + ["final"],
        timestep=[100, 100, 200, 200, 600, 600, None],
    )
    table = agreement_by_timestep(judgments, bucket_width=250)
    assert table.select("bucket", "pairs", "judgments", "pairwise_agreement").rows() == [
        ("0-249", 2, 4, 0.5),
        ("500-749", 1, 2, 1.0),
    ]
    # Bucket 0-249: o_aa = 2, o_ab = o_ba = 1; n_a = 3, n_b = 1, n = 4: alpha = (3*2 - 6) / (12 - 6) = 0.
    assert table["alpha"].to_list() == [pytest.approx(0.0), None]
