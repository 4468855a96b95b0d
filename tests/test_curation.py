"""Curations on a real store: consensus methods, filters, saved curations, dataset versions, downloads."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from labeling_data import MadePair, add_shapes_pairs
from typer.testing import CliRunner

from datastore.consensus import ConsensusError, dawid_skene, dawid_skene_consensus, majority_consensus
from datastore.datasets import DatasetFilters, create_dataset_version, judgments_frame
from datastore.errors import StoreError
from datastore.media import encode_png
from datastore.records import (
    ImageRow,
    NewJudgment,
    NewPair,
    ensure_annotator,
    insert_images,
    insert_judgments,
    insert_pairs,
    upsert_prompts,
)
from datastore.store import Store
from labeling.agreement import krippendorff_alpha
from labeling.curation import (
    Curation,
    CurationError,
    build_curation,
    export_download,
    list_curations,
    load_curation,
    near_duplicate_pairs,
    save_curation,
)
from reward_models.shapes import render
from training.spm import select_pairs
from workbench.cli import app

runner = CliRunner()

OTHER = {"a": "b", "b": "a"}


def judge(store: Store, rows: list[tuple]) -> None:
    """Write judgments: (pair_id, annotator, outcome[, left_image[, (score_a, score_b)]]); names 'bot*' are AI."""
    with store.write() as con:
        judgments = []
        for pair_id, name, outcome, *rest in rows:
            ai = name.startswith("bot")
            annotator = ensure_annotator(con, name, kind="ai" if ai else "human")
            left = rest[0] if rest else None
            scores = rest[1] if len(rest) > 1 else (None, None)
            judgments.append(
                NewJudgment(
                    pair_id,
                    annotator,
                    "ai" if ai else "app",
                    outcome,
                    left_image=left,
                    score_a=scores[0],
                    score_b=scores[1],
                )
            )
        insert_judgments(con, judgments)


def judged_home(store: Store) -> list[MadePair]:
    """Four final pairs (pair 1 gold) judged by ann, bob, cat (people) and bot (AI).

    With g / w the better / worse image of each pair:
        pair 1 (gold g): ann g, bob g, cat w               -> majority g
        pair 2:          ann g, bob g, cat w, bot g (margin 0.5)   -> g
        pair 3:          ann g, bob w, cat tie, bot w (margin 0.05) -> w (2 of 4)
        pair 4:          ann both_bad, bob both_bad, cat g  -> mostly both-bad: left out
    Every left image is 'a'.
    """
    made = add_shapes_pairs(store, 4, gold_every=4)
    p1, p2, p3, p4 = made
    g = {p.pair_id: p.better for p in made}
    w = {k: OTHER[v] for k, v in g.items()}
    judge(
        store,
        [
            (p1.pair_id, "ann", g[p1.pair_id], "a"), (p1.pair_id, "bob", g[p1.pair_id], "a"), (p1.pair_id, "cat", w[p1.pair_id], "a"),
            (p2.pair_id, "ann", g[p2.pair_id], "a"), (p2.pair_id, "bob", g[p2.pair_id], "a"), (p2.pair_id, "cat", w[p2.pair_id], "a"),
            (p2.pair_id, "bot", g[p2.pair_id], None, (0.9, 0.4) if g[p2.pair_id] == "a" else (0.4, 0.9)),
            (p3.pair_id, "ann", g[p3.pair_id], "a"), (p3.pair_id, "bob", w[p3.pair_id], "a"), (p3.pair_id, "cat", "tie", "a"),
            (p3.pair_id, "bot", w[p3.pair_id], None, (0.55, 0.5) if w[p3.pair_id] == "a" else (0.5, 0.55)),
            (p4.pair_id, "ann", "both_bad", "a"), (p4.pair_id, "bob", "both_bad", "a"), (p4.pair_id, "cat", g[p4.pair_id], "a"),
        ],
    )  # fmt: skip
    return made


def truth_table(
    kinds: tuple[str, str], n: int = 20, gold_every: int = 5, seed: int = 3
) -> tuple[pl.DataFrame, np.ndarray]:
    """Judgments of n pairs by 'good' (always right) and two others of the given kinds (flip / random)."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(["a", "b"], n)
    rows = []
    for i, t in enumerate(truth):
        answers = {"good": t}
        for name, kind in zip(("x", "y"), kinds, strict=True):
            answers[name] = OTHER[t] if kind == "flip" else str(rng.choice(["a", "b"]))
        for name, outcome in answers.items():
            rows.append((len(rows) + 1, i, name, outcome, t if i % gold_every == 0 else None))
    frame = pl.DataFrame(
        rows, schema=["judgment_id", "pair_id", "annotator", "outcome", "gold_outcome"], orient="row"
    )
    return frame, truth


@pytest.mark.parametrize("kinds", [("flip", "flip"), ("flip", "random")])
def test_dawid_skene_recovers_the_truth_where_majority_fails(kinds: tuple[str, str]) -> None:
    frame, truth = truth_table(kinds)
    plain = np.arange(len(truth)) % 5 != 0  # pairs without a known answer
    majority = majority_consensus(frame).sort("pair_id")["consensus"].to_numpy()
    fit = dawid_skene(frame)
    ds = fit.labels.sort("pair_id")["consensus"].to_numpy()
    assert (ds[plain] == truth[plain]).all()
    # Two flippers out-vote the good annotator on every plain pair; a flipper and a coin wherever the coin
    # falls wrong (5 of the 16 plain pairs with this seed).
    wrong = int((majority[plain] != truth[plain]).sum())
    assert wrong == (16 if kinds == ("flip", "flip") else 5)
    accuracy = dict(fit.annotators.select("annotator", "accuracy").iter_rows())
    assert accuracy["good"] > 0.95 and accuracy["x"] < 0.05
    assert fit.converged
    again = dawid_skene(frame)
    assert again.labels.equals(fit.labels) and again.iterations == fit.iterations


def test_dawid_skene_consensus_counts_both_bad_like_the_majority_vote() -> None:
    frame = pl.DataFrame(
        {
            "judgment_id": [1, 2, 3, 4, 5, 6],
            "pair_id": [1, 1, 1, 2, 2, 2],
            "annotator": ["x", "y", "z", "x", "y", "z"],
            "outcome": ["a", "a", "both_bad", "both_bad", "both_bad", "b"],
            "gold_outcome": [None] * 6,
        },
        schema_overrides={"gold_outcome": pl.String},
    )
    # Pair 1: both_bad enters n_judgments (3) and agreement (2 of 3); pair 2 is mostly both-bad: left out.
    assert dawid_skene_consensus(frame).rows() == [(1, "a", 3, pytest.approx(2 / 3))]
    assert majority_consensus(frame).rows() == [(1, "a", 3, pytest.approx(2 / 3))]
    with pytest.raises(ConsensusError, match="at least one a / b / tie"):
        dawid_skene(frame.filter(pl.col("outcome") == "both_bad"))


def test_saved_curation_builds_the_same_version_from_the_same_judgments(store: Store) -> None:
    made = judged_home(store)
    curation = Curation("clean", method="dawid_skene", filters=DatasetFilters(min_judgments=2))
    save_curation(store, curation)
    with pytest.raises(CurationError, match="exists"):
        save_curation(store, Curation("clean"))
    assert load_curation(store, "clean") == curation
    assert [c.name for c in list_curations(store)] == ["clean"]

    first = build_curation(store, "clean")
    second = build_curation(store, "clean")
    assert (first.id, first.content_hash) == (second.id, second.content_hash)
    assert first.id.startswith("clean-") and first.n_pairs == 3  # pair 4 is mostly both-bad
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["curation"]["name"] == "clean" and manifest["curation"]["method"] == "dawid_skene"
    assert first.curation["method"] == "dawid_skene"

    # Replacing it with the majority vote and min agreement 0.6 keeps pairs 1 and 2 (2 of 3 and 3 of 4 agree).
    save_curation(store, Curation("clean", filters=DatasetFilters(min_agreement=0.6)), replace=True)
    majority = build_curation(store, "clean")
    rows = (
        pl.read_parquet(majority.pairs_file).select("pair_id", "label_0", "n_judgments", "agreement").rows()
    )
    p1, p2 = made[0], made[1]
    label = {"a": 1.0, "b": 0.0}
    assert rows == [
        (p1.pair_id, label[p1.better], 3, pytest.approx(2 / 3)),
        (p2.pair_id, label[p2.better], 4, 0.75),
    ]
    assert majority.content_hash != first.content_hash and majority.curation["method"] == "majority"

    # A new judgment changes the rows: a new hash.
    judge(store, [(p1.pair_id, "dan", OTHER[p1.better])])
    assert build_curation(store, "clean").content_hash != majority.content_hash


def test_curation_filters(store: Store) -> None:
    made = judged_home(store)
    p1, p2, p3, p4 = (p.pair_id for p in made)

    def built(**kwargs) -> dict[int, tuple]:
        version = build_curation(store, Curation("f", **kwargs))
        frame = pl.read_parquet(version.pairs_file)
        return {r[0]: r[1:] for r in frame.select("pair_id", "label_0", "n_judgments").rows()}

    # cat got the gold pair wrong (0 of 1): dropped below 0.5; ann and bob (1 of 1) and bot (no gold) stay.
    no_cat = built(min_gold_accuracy=0.5)
    assert no_cat[p1][1] == 2 and no_cat[p2][1] == 3 and p4 not in no_cat
    version = build_curation(store, Curation("f", min_gold_accuracy=0.5))
    assert version.curation["excluded_annotators"] == ["cat"] and version.filters["exclude_annotators"] == [
        "cat"
    ]

    # People only: pair 3 is g, w, tie -> an a-b draw, a tie (0.5).
    humans = built(filters=DatasetFilters(annotator_kinds=("human",)))
    assert humans[p3] == (0.5, 3) and humans[p2][1] == 3
    # AI only: bot judged pairs 2 and 3.
    assert set(built(filters=DatasetFilters(annotator_kinds=("ai",)))) == {p2, p3}
    # AI judgments under a 0.1 margin are not counted: bot's pair 3 judgment (0.05) goes, pair 2 (0.5) stays.
    margin = built(filters=DatasetFilters(min_ai_margin=0.1))
    assert margin[p3] == (0.5, 3) and margin[p2][1] == 4
    # Ties out drops that pair; both-bad judgments dropped lets pair 4 in on cat's single judgment.
    assert p3 not in built(filters=DatasetFilters(min_ai_margin=0.1, include_ties=False))
    no_bad = built(filters=DatasetFilters(include_both_bad=False))
    assert no_bad[p4] == ({"a": 1.0, "b": 0.0}[made[3].better], 1)
    # Gold pairs out.
    assert p1 not in built(filters=DatasetFilters(include_gold=False))


def near_duplicate_pair(store: Store) -> int:
    """A pair of one render and the same render with one pixel changed."""
    image = render("a large red circle in the center", 32, np.random.default_rng(0))
    copy = image.copy()
    copy.putpixel((0, 0), (255, 255, 255))
    with store.write() as con:
        prompt_id = upsert_prompts(con, ["a large red circle in the center"])[
            "a large red circle in the center"
        ]
        stored = [store.media.put_bytes(encode_png(im), sync=False) for im in (image, copy)]
        insert_images(con, [ImageRow(s) for s in stored])
        [pair_id] = insert_pairs(con, [NewPair(prompt_id, stored[0].id, stored[1].id)])
    return pair_id


def test_near_duplicate_pairs_are_found_and_dropped(store: Store) -> None:
    made = judged_home(store)
    dup = near_duplicate_pair(store)
    judge(store, [(dup, "ann", "a"), (dup, "bob", "a")])
    found = near_duplicate_pairs(store, judgments_frame(store), max_distance=4)
    assert found["pair_id"].to_list() == [dup] and found["distance"].to_list()[0] <= 2
    # The shapes pairs show different colours, shapes and positions: far apart.
    assert near_duplicate_pairs(store, judgments_frame(store), max_distance=64).height == len(made) + 1
    version = build_curation(store, Curation("dedup", near_duplicate_distance=4))
    assert dup not in pl.read_parquet(version.pairs_file)["pair_id"].to_list()
    assert version.curation["near_duplicate_pairs"] == [dup]


def test_export_download_in_every_format(store: Store) -> None:
    judged_home(store)
    version = build_curation(store, Curation("dl"))
    name, data = export_download(version, "pickapic")
    assert name == f"{version.id}.parquet"
    table = pl.read_parquet(io.BytesIO(data))
    assert table.height == version.n_pairs and {"jpg_0", "label_0", "caption"} <= set(table.columns)
    name, data = export_download(version, "hf")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert name == f"{version.id}-hf.zip"
    assert f"{version.id}/data/train-00000-of-00001.parquet" in names and f"{version.id}/README.md" in names
    name, data = export_download(version, "jsonl")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert (
        f"{version.id}.jsonl" in names and sum(n.startswith("images/") for n in names) == 2 * version.n_pairs
    )


def test_bad_curations_are_refused_and_change_nothing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(CurationError, match="curation name"):
        Curation("../evil")
    with pytest.raises(CurationError, match="method must be one of"):
        Curation("x", method="vote")
    with pytest.raises(CurationError, match="min_gold_accuracy"):
        Curation("x", min_gold_accuracy=1.5)
    with pytest.raises(CurationError, match="no curation named 'nope'"):
        load_curation(store, "nope")
    save_curation(store, Curation("empty"))
    with pytest.raises(CurationError, match="no judgment passes"):
        build_curation(store, "empty")
    assert list(store.datasets_dir.iterdir()) == []


def test_cli_save_list_build_and_agreement(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store.open(home)
    judged_home(store)
    dup = near_duplicate_pair(store)
    judge(store, [(dup, "ann", "a"), (dup, "bob", "b")])

    def run(*args: str) -> str:
        result = runner.invoke(app, ["--home", str(home), "curation", *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert "saved curation people (dawid_skene)" in run(
        "save",
        "people",
        "--method",
        "dawid_skene",
        "--annotators",
        "human",
        "--no-ties",
        "--min-gold-accuracy",
        "0.5",
        "--step-judgments",
        "completion",
    )
    bad = runner.invoke(app, ["--home", str(home), "curation", "save", "people"])
    assert bad.exit_code == 1 and "exists" in bad.output
    bad = runner.invoke(app, ["--home", str(home), "curation", "save", "x", "--min-agreement", "2"])
    assert bad.exit_code == 1 and "min_agreement must be within [0, 1]" in bad.output
    listed = run("list")
    assert "people" in listed and "dawid_skene" in listed and "min_gold_accuracy=0.5" in listed
    assert load_curation(store, "people").filters.step_judgments == "completion"

    built = run("build", "people")
    version = build_curation(store, "people")
    assert f"dataset version {version.id}: {version.n_pairs} pairs" in built
    assert f"content hash {version.content_hash}" in built

    out = run("agreement", "--near-duplicates", "4")
    assert "16 judgments of 5 pairs by 4 annotators" in out
    assert f"Krippendorff's alpha: {krippendorff_alpha(judgments_frame(store)):.3f}" in out
    for title in (
        "Cohen's kappa",
        "Annotator quality",
        "Position bias",
        "Human vs AI",
        "Near-duplicate pairs",
    ):
        assert title in out
    human_only = run("agreement", "--annotators", "human")
    assert "14 judgments of 5 pairs by 3 annotators" in human_only


def test_a_version_records_which_step_pairs_were_judged_on_completions_and_can_keep_only_those(
    store: Store,
) -> None:
    (final,) = add_shapes_pairs(store, 1)
    both, mixed, bare = (p.pair_id for p in add_shapes_pairs(store, 3, kind="step", seed=2))
    with store.write() as con:
        ann, bob = ensure_annotator(con, "ann"), ensure_annotator(con, "bob")
        judgments = [
            (final.pair_id, ann, None), (both, ann, "completion"), (both, bob, "completion"),
            (mixed, ann, "completion"), (mixed, bob, None), (bare, ann, None),
        ]  # fmt: skip
        insert_judgments(con, [NewJudgment(p, a, "app", "a", preview=v) for p, a, v in judgments])

    def rows(version) -> list[tuple]:
        return pl.read_parquet(version.pairs_file).select("pair_id", "kind", "n_judgments", "preview").rows()

    every = create_dataset_version(store, "every")
    assert rows(every) == [
        (final.pair_id, "final", 1, None), (both, "step", 2, "completion"), (mixed, "step", 2, None), (bare, "step", 1, None),
    ]  # fmt: skip
    # Only step judgments made on completions count: the x0 one of the mixed pair goes, the bare pair with it.
    completions = create_dataset_version(store, "completions", DatasetFilters(step_judgments="completion"))
    assert rows(completions) == [
        (final.pair_id, "final", 1, None), (both, "step", 2, "completion"), (mixed, "step", 1, "completion"),
    ]  # fmt: skip
    assert completions.filters["step_judgments"] == "completion" and completions.content_hash != every.content_hash
    # The SPM's step_pairs=completion takes exactly the step pairs judged on completions.
    kept = select_pairs(pl.read_parquet(every.pairs_file), "completion")
    assert kept["pair_id"].to_list() == [final.pair_id, both]
    with pytest.raises(StoreError, match="step_judgments must be 'all' or 'completion', got 'x0'"):
        DatasetFilters(step_judgments="x0")
    # The same version from the CLI.
    result = runner.invoke(app, ["--home", str(store.home), "dataset", "create", "completions", "--step-judgments", "completion"])
    assert result.exit_code == 0, result.output
    with store.read() as con:  # the CLI built the very same version
        assert sorted(r[0] for r in con.execute("SELECT id FROM dataset_versions").fetchall()) == sorted(
            [completions.id, every.id]
        )
