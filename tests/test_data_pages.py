"""The Data and Export pages, headless through AppTest, on a real store filled here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labeling_data import add_shapes_pairs
from streamlit.testing.v1 import AppTest
from test_curation import judge, near_duplicate_pair

from datastore.datasets import DatasetFilters
from datastore.store import Store
from labeling.curation import load_curation

UI = Path(__file__).resolve().parents[1] / "workbench" / "ui"


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home


def fill(store: Store) -> None:
    """Three final pairs and two step pairs (t = 950, 900) judged by ann, bob (people) and bot (AI).

    (pair: outcome / side shown left)
        P1: ann a/a, bob a/b, bot a (scores 0.9, 0.1)
        P2: ann b/a, bob a/a
        P3: ann tie/a, bob both_bad/a
        S1: ann a/a, bob a/a
        S2: ann b/b, bob a/b
    """
    p1, p2, p3 = (p.pair_id for p in add_shapes_pairs(store, 3))
    s1, s2 = (p.pair_id for p in add_shapes_pairs(store, 2, kind="step", seed=1))
    judge(
        store,
        [
            (p1, "ann", "a", "a"), (p1, "bob", "a", "b"), (p1, "bot", "a", None, (0.9, 0.1)),
            (p2, "ann", "b", "a"), (p2, "bob", "a", "a"),
            (p3, "ann", "tie", "a"), (p3, "bob", "both_bad", "a"),
            (s1, "ann", "a", "a"), (s1, "bob", "a", "a"),
            (s2, "ann", "b", "b"), (s2, "bob", "a", "b"),
        ],
    )  # fmt: skip


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_data_page_shows_the_statistics(home: Path) -> None:
    store = Store.open(home)
    fill(store)
    at = AppTest.from_file(str(UI / "data.py"), default_timeout=60).run()
    assert not at.exception
    # alpha, coincidence matrix over a / b / tie / both_bad (pair: values):
    #   P1 a,a,a: o_aa += 3 | P2 b,a: o_ab = o_ba += 1 | P3 tie,bb: o_tie,bb = o_bb,tie += 1
    #   S1 a,a: o_aa += 2   | S2 b,a: o_ab = o_ba += 1
    #   o_aa = 5, o_ab = o_ba = 2, o_tie,bb = o_bb,tie = 1; n_a = 7, n_b = 2, n_tie = 1, n_bb = 1, n = 11
    #   alpha = (10 * 5 - (42 + 2)) / (11 * 10 - 44) = 6 / 66 = 0.091
    assert metrics(at) == {
        "Judgments": "11",
        "Pairs": "5",
        "Annotators": "3",
        "Krippendorff's alpha": "0.091",
    }
    judgments, kappa, quality, bias, human_ai, rates, timestep = (d.value for d in at.dataframe)
    assert len(judgments) == 11
    # ann-bob over 5 pairs: ann a,b,tie,a,b; bob a,a,bb,a,a. p_o = 2/5; p_e = (2/5)(4/5) = 8/25;
    # kappa = (0.4 - 0.32) / 0.68 = 0.1176. With bot (one common pair, both a): p_e = 1, kappa empty.
    assert kappa[["annotator_1", "annotator_2", "common"]].values.tolist() == [
        ["ann", "bob", 5],
        ["ann", "bot", 1],
        ["bob", "bot", 1],
    ]
    assert kappa["kappa"].iloc[0] == pytest.approx(0.08 / 0.68) and kappa["kappa"].iloc[1:].isna().all()
    # Majority: P1 a, P2 draw -> tie, P3 tie (1 tie, 1 both-bad), S1 a, S2 draw -> tie.
    # ann agrees on P1, P3, S1 (3/5); bob on P1, S1 (2/5); bot on P1 (1/1).
    assert quality["consensus_agreement"].tolist() == pytest.approx([0.6, 0.4, 1.0])
    # Left picks among decisive answers: ann P1, S1, S2 of 4 (0.75); bob P2, S1 of 4 (0.5); bot's sides unknown.
    assert bias.values.tolist() == [["ann", 4, 3, 0.75], ["bob", 4, 2, 0.5]]
    assert human_ai.values.tolist() == [["bot", 1, 1.0]]
    assert rates[["kind", "judgments", "ties", "both_bad"]].values.tolist() == [
        ["ai", 1, 0, 0],
        ["human", 10, 1, 1],
        ["all", 11, 1, 1],
    ]
    # Step pairs: S1 a,a and S2 b,a, both in 750-999: agreeing judgment pairs 2 of 4; alpha (3*2 - 6) / (12 - 6) = 0.
    assert timestep[["bucket", "pairs", "judgments", "pairwise_agreement", "alpha"]].values.tolist() == [
        ["750-999", 2, 4, 0.5, 0.0]
    ]

    at.selectbox(key="data_annotators").select("People").run()
    assert metrics(at)["Judgments"] == "10" and metrics(at)["Annotators"] == "2"

    dup = near_duplicate_pair(store)
    judge(store, [(dup, "ann", "a")])
    at.button(key="data_find_dups").click().run()
    assert "1 pairs whose two images are near-duplicates" in at.caption[-1].value
    assert at.dataframe[-1].value["pair_id"].tolist() == [dup]


def test_data_page_without_judgments(home: Path) -> None:
    Store.open(home)
    at = AppTest.from_file(str(UI / "data.py"), default_timeout=60).run()
    assert not at.exception
    assert "no judgment matches the filters" in at.info[0].value


def test_export_page_saves_builds_and_writes(home: Path, tmp_path: Path) -> None:
    store = Store.open(home)
    fill(store)
    at = AppTest.from_file(str(UI / "export.py"), default_timeout=60).run()
    assert not at.exception
    assert at.selectbox(key="export_curation").options == ["New curation..."]
    at.text_input(key="new_name").input("pagecur")
    at.checkbox(key="new_ties").uncheck()
    next(b for b in at.button if b.label == "Save curation").click().run()
    assert not at.exception
    assert at.selectbox(key="export_curation").value == "pagecur"

    at.button(key="export_build").click().run()
    # Without ties the majority vote keeps P1 (3 judgments) and S1 (2).
    assert metrics(at) == {"Pairs": "2", "Ties": "0", "Judgments": "5"}
    (version_dir,) = (home / "datasets").iterdir()
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["curation"]["name"] == "pagecur" and manifest["curation"]["method"] == "majority"
    assert manifest["id"] in at.success[0].value and manifest["content_hash"] in at.success[0].value

    out = tmp_path / "out"
    at.radio(key="export_format").set_value("hf").run()
    at.text_input(key="export_folder").input(str(out)).run()
    at.button(key="export_write").click().run()
    assert (out / manifest["id"] / "data" / "train-00000-of-00001.parquet").is_file()
    at.button(key="export_prepare").click().run()
    assert not at.exception
    assert at.session_state["export_download"][2] == f"{manifest['id']}-hf.zip"


def test_export_page_saves_which_step_judgments_count(home: Path) -> None:
    store = Store.open(home)
    fill(store)
    at = AppTest.from_file(str(UI / "export.py"), default_timeout=60).run()
    at.text_input(key="new_name").input("previewed")
    at.radio(key="new_step_judgments").set_value("completion")
    next(b for b in at.button if b.label == "Save curation").click().run()
    assert not at.exception
    assert load_curation(store, "previewed").filters.step_judgments == "completion"
    assert load_curation(store, "previewed").filters == DatasetFilters(step_judgments="completion")
