"""AI feedback: scorers judge pending pairs into the store, through the library and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from labeling_data import add_shapes_pairs
from tiny_clip import build_tiny_clip
from typer.testing import CliRunner

from datastore.store import Store
from labeling.ai_feedback import label_with_scorer
from labeling.errors import LabelingError
from labeling.queue import human_annotator
from reward_models.clip import load_clip
from reward_models.shapes import ShapesOracle
from reward_models.step_aware import StepAwareCLIP, StepAwareScorer
from workbench.cli import app

runner = CliRunner()


def _ai_judgments(store: Store) -> dict[int, tuple]:
    with store.read() as con:
        rows = con.execute(
            "SELECT j.pair_id, j.outcome, j.score_a, j.score_b, j.source, j.is_gold, j.left_image, a.name, a.kind "
            "FROM judgments j JOIN annotators a ON a.id = j.annotator_id"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_shapes_oracle_prefers_the_image_of_the_prompt(store: Store) -> None:
    made = add_shapes_pairs(store, 12, same_every=4, gold_every=5)
    made += add_shapes_pairs(store, 6, kind="step", same_every=3, seed=1)
    report = label_with_scorer(store, ShapesOracle())
    assert (report.judged, report.by_kind, report.already_judged) == (18, {"final": 12, "step": 6}, 0)
    judged = _ai_judgments(store)
    decided = [p for p in made if judged[p.pair_id][0] != "tie"]
    assert len(decided) >= 12  # 13 pairs have a better image; same-prompt pairs are ties
    for pair in decided:
        outcome, score_a, score_b, source, is_gold, left, name, kind = judged[pair.pair_id]
        assert outcome == pair.better, pair
        assert (score_a > score_b) == (outcome == "a")
        assert (source, is_gold, left, name, kind) == ("ai", pair.gold, None, "shapes-oracle@1", "ai")
    assert report.ties == sum(judged[p.pair_id][0] == "tie" for p in made)
    assert all(judged[p.pair_id][1] == judged[p.pair_id][2] for p in made if judged[p.pair_id][0] == "tie")


def test_idempotent_limit_and_tie_margin(store: Store) -> None:
    add_shapes_pairs(store, 5)
    first = label_with_scorer(store, ShapesOracle(), limit=2, tie_margin=1.0, batch_size=1)
    assert (first.judged, first.ties) == (2, 2)  # oracle scores lie in [0, 1]: every pair is a tie
    rest = label_with_scorer(store, ShapesOracle(), batch_size=2)
    assert (rest.judged, rest.already_judged) == (3, 2)
    again = label_with_scorer(store, ShapesOracle())
    assert (again.judged, again.already_judged) == (0, 5)
    assert len(_ai_judgments(store)) == 5
    with pytest.raises(LabelingError, match="tie_margin must be >= 0"):
        label_with_scorer(store, ShapesOracle(), tie_margin=-1)
    human_annotator(store, "shapes-oracle@2")
    oracle = ShapesOracle()
    oracle.version = "2"
    with pytest.raises(LabelingError, match="belongs to a person"):
        label_with_scorer(store, oracle)


def test_a_round_judges_only_its_own_pairs(store: Store) -> None:
    made = add_shapes_pairs(store, 6)
    ours = [p.pair_id for p in made[:4]]
    with store.write() as con:
        con.execute("UPDATE pairs SET round_id = 7 WHERE list_contains(?, id)", [ours])
    report = label_with_scorer(store, ShapesOracle(), round_id=7, batch_size=3)
    assert (report.judged, report.already_judged) == (4, 0)
    assert sorted(_ai_judgments(store)) == sorted(ours)
    rest = label_with_scorer(store, ShapesOracle())
    assert (rest.judged, rest.already_judged) == (2, 4)


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory) -> Path:
    """A tiny step-aware model whose timestep modulation is far from the identity, so t matters."""
    clip, processor = load_clip(build_tiny_clip(tmp_path_factory.mktemp("clip")))
    spm = StepAwareCLIP.from_clip(clip)
    torch.manual_seed(0)
    with torch.no_grad():
        for head in spm.modulation.heads:
            head.weight.normal_(0.0, 0.5)
    return spm.save_pretrained(tmp_path_factory.mktemp("spm"), processor)


def test_cli_step_aware_model_gets_the_step_pairs_timesteps(tmp_path: Path, spm_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    add_shapes_pairs(store, 3, kind="step")
    result = runner.invoke(
        app,
        [
            "--home",
            str(store.home),
            "label",
            "ai",
            "--scorer",
            "spm",
            "--model",
            str(spm_path),
            "--kind",
            "step",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 judged (3 step)" in result.output
    scorer = StepAwareScorer.from_pretrained(spm_path)
    with store.read() as con:
        rows = con.execute(
            "SELECT p.timestep, pr.text, ia.path, j.score_a, a.name FROM judgments j JOIN pairs p ON p.id = j.pair_id "
            "JOIN prompts pr ON pr.id = p.prompt_id JOIN images ia ON ia.id = p.image_a "
            "JOIN annotators a ON a.id = j.annotator_id"
        ).fetchall()
    images = [store.media.open_image(r[2]) for r in rows]
    prompts = [r[1] for r in rows]
    at_t = scorer.score(images, prompts, [r[0] for r in rows])
    np.testing.assert_allclose([r[3] for r in rows], at_t, rtol=1e-5)
    assert not np.allclose(at_t, scorer.score(images, prompts, [0] * len(rows)), rtol=1e-3)
    assert rows[0][4] == f"spm@{spm_path}"


def test_cli_shapes_oracle_gold_and_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    add_shapes_pairs(Store.open(home), 4, gold_every=2)
    result = runner.invoke(app, ["--home", str(home), "label", "gold"])
    assert result.exit_code == 0 and "no judgments of gold pairs yet" in result.output
    result = runner.invoke(
        app, ["--home", str(home), "label", "ai", "--scorer", "shapes-oracle", "--limit", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "shapes-oracle@1: 3 judged (3 final, 0 step)" in result.output
    result = runner.invoke(app, ["--home", str(home), "label", "ai", "--scorer", "shapes-oracle"])
    assert "1 judged" in result.output and "3 judged before" in result.output
    result = runner.invoke(app, ["--home", str(home), "label", "gold"])
    assert "shapes-oracle@1 (ai): 2/2 = 100.0%" in result.output
    result = runner.invoke(app, ["--home", str(home), "label", "ai", "--scorer", "clip"])
    assert result.exit_code == 1 and "needs --model" in result.output
    result = runner.invoke(
        app, ["--home", str(home), "label", "ai", "--scorer", "shapes-oracle", "--kind", "noisy"]
    )
    assert result.exit_code == 1 and "kinds must be a non-empty subset" in result.output
