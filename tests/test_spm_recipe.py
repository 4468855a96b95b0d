"""The SPM recipe on a tiny snapshot with final and step pairs, a tiny SD1.5 and a tiny CLIP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from tiny_clip import build_tiny_clip
from tiny_models import build_tiny_sd15, draw_shape, write_snapshot

from reward_models.spec import scorer_from_spec
from reward_models.step_aware import StepAwareScorer
from training.config import ConfigError
from training.data import SnapshotError
from training.features import EncodedOnce, Features
from training.parts import load_parts
from training.spm import SPMConfig, is_held_out, main, select_pairs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return build_tiny_sd15(root / "sd"), build_tiny_clip(root / "clip")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """8 pairs: odd ids final, even ids step pairs at t = 110 * id (220 .. 880), the last one a tie."""
    folder = write_snapshot(tmp_path_factory.mktemp("snap") / "v1", n_pairs=8, n_ties=1)
    table = pl.read_parquet(folder / "pairs.parquet")
    is_step = pl.col("pair_id") % 2 == 0
    table.with_columns(
        pl.when(is_step).then(pl.lit("step")).otherwise(pl.col("kind")).alias("kind"),
        pl.when(is_step).then(pl.col("pair_id") * 110).otherwise(None).alias("timestep"),
    ).write_parquet(folder / "pairs.parquet")
    return folder


def config(models, snapshot, output_dir, **overrides) -> SPMConfig:
    sd, clip = models
    options = {
        "pretrained_model": str(sd),
        "reward_model": str(clip),
        "dataset": snapshot,
        "output_dir": output_dir,
        "resolution": 16,
        "batch_size": 4,
        "max_steps": 1,
        "eval_fraction": 0.3,
        "learning_rate": 1e-3,
        "modulation_learning_rate": 1e-2,
    }
    return SPMConfig(**{**options, **overrides})


def test_one_step_trains_a_step_aware_model(models, snapshot, tmp_path):
    cfg = config(models, snapshot, tmp_path / "run")
    final = main(cfg)

    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1 and np.isfinite(record["loss"])
    # Held-out final pairs are scored once per bucket: each of the four buckets reports.
    for bucket in ("t0_250", "t250_500", "t500_750", "t750_1000"):
        assert 0 <= record[f"eval_{bucket}_accuracy"] <= 1
        assert record[f"eval_{bucket}_pairs"] >= 1
        # The clean-image scorer's accuracy on the same cases, before the first step.
        assert record[f"initial_eval_{bucket}_pairs"] == record[f"eval_{bucket}_pairs"]
        assert 0 <= record[f"initial_eval_{bucket}_accuracy"] <= 1
    assert 0 <= record["train_accuracy"] <= 1
    assert (tmp_path / "run" / "checkpoints" / "step-00000001").is_dir()

    # The saved SPM loads through the scorer spec, and training made it depend on t.
    scorer = scorer_from_spec(f"spm:{final}")
    assert isinstance(scorer, StepAwareScorer)
    images, prompts = [draw_shape("red", "circle"), draw_shape("blue", "square")], ["a red circle", "a blue square"]
    assert np.abs(scorer.score(images, prompts, [0, 0]) - scorer.score(images, prompts, [900, 900])).max() > 1e-4


def test_held_out_split_is_by_prompt_and_stable():
    prompts = [f"a prompt {i}" for i in range(2000)]
    held = [is_held_out(p, 0.1, seed=0) for p in prompts]
    assert 0.07 < np.mean(held) < 0.13
    assert held == [is_held_out(p, 0.1, seed=0) for p in prompts]
    assert not any(is_held_out(p, 0.0, seed=0) for p in prompts)


def test_continues_from_a_saved_spm(models, snapshot, tmp_path):
    first = main(config(models, snapshot, tmp_path / "first", eval_fraction=0.0))
    second = main(config(models, snapshot, tmp_path / "second", eval_fraction=0.0, reward_model=str(first), trainable="modulation"))
    record = json.loads((tmp_path / "second" / "metrics.jsonl").read_text().splitlines()[0])
    assert "eval_accuracy" not in record
    # Only the modulation trained in the second run: the CLIP weights are the first run's.
    a, b = StepAwareScorer.from_pretrained(first).model.clip, StepAwareScorer.from_pretrained(second).model.clip
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_reruns_of_one_config_train_the_same_weights(models, snapshot, tmp_path):
    runs = [main(config(models, snapshot, tmp_path / name, eval_fraction=0.0, max_steps=2)) for name in ("a", "b")]
    other_seed = main(config(models, snapshot, tmp_path / "c", eval_fraction=0.0, max_steps=2, seed=1))
    files = sorted(path.name for path in runs[0].glob("*.safetensors"))
    assert files == ["model.safetensors", "timestep_modulation.safetensors"]
    for name in files:
        a, b, c = (load_file(folder / name) for folder in (*runs, other_seed))
        assert all(torch.equal(a[key], b[key]) for key in a), name
    assert any(not torch.equal(a[key], c[key]) for key in a)


def test_latents_and_prompt_embeddings_are_encoded_once_per_run(models, snapshot, tmp_path):
    parts = load_parts(str(models[0]))
    features = Features(parts, 16, torch.device("cpu"))
    once = EncodedOnce(features)
    images = sorted((snapshot / "images").iterdir())[:3]
    copies = [shutil.copy(path, tmp_path / path.name) for path in images]
    paths = [Path(copies[0]), Path(copies[1]), Path(copies[0]), Path(copies[2])]
    torch.testing.assert_close(once.latents(paths), features.latents(paths), rtol=1e-5, atol=1e-6)
    hidden, _ = once.prompts(["a red circle", "", "a red circle"])
    torch.testing.assert_close(hidden, features.prompts(["a red circle", "", "a red circle"])[0])
    # Met once, a file is not read again: gone from disk, its latents are still there.
    Path(copies[0]).unlink()
    assert once.latents([Path(copies[0])]).shape == (1, *features.latents(paths[1:2]).shape[1:])
    with pytest.raises(FileNotFoundError):
        features.latents([Path(copies[0])])


def test_cached_latents_train_like_encoding_every_batch(models, snapshot, tmp_path):
    runs = {
        cache: main(config(models, snapshot, tmp_path / str(cache), eval_fraction=0.0, max_steps=3, cache_latents=cache))
        for cache in (True, False)
    }
    losses = {
        cache: [json.loads(line)["loss"] for line in (tmp_path / str(cache) / "metrics.jsonl").read_text().splitlines()]
        for cache in runs
    }
    # Equal up to float rounding, which the decoded x0s' 8-bit pixels can turn into a step of one level.
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"timestep_buckets": (0, 500, 400)}, "timestep_buckets must rise strictly from 0"),
        ({"eval_fraction": 1.0}, r"eval_fraction must be in \[0, 1\)"),
        ({"trainable": "text"}, "trainable must be one of modulation, vision, all"),
        ({"learning_rate": -3}, "learning_rate must be > 0, got -3"),
    ],
)
def test_config_says_what_is_wrong(models, snapshot, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(models, snapshot, tmp_path, **overrides)


def test_step_pair_without_timestep_is_named(models, snapshot, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "images").symlink_to(snapshot / "images")
    (broken / "manifest.json").write_bytes((snapshot / "manifest.json").read_bytes())
    table = pl.read_parquet(snapshot / "pairs.parquet")
    table.with_columns(timestep=pl.lit(None, dtype=pl.Int64)).write_parquet(broken / "pairs.parquet")
    with pytest.raises(SnapshotError, match="step pair 2 has no timestep"):
        main(config(models, broken, tmp_path / "run", eval_fraction=0.0, step_pairs="all"))


def test_step_pairs_enter_only_when_asked(snapshot):
    table = pl.read_parquet(snapshot / "pairs.parquet")
    # Pair 2 was judged on its completion preview, pair 4 on its predicted x0.
    table = table.with_columns(
        preview=pl.when(pl.col("pair_id") == 2).then(pl.lit("completion")).otherwise(pl.lit(None, dtype=pl.String))
    )
    ids = {mode: select_pairs(table, mode)["pair_id"].to_list() for mode in ("none", "completion", "all")}
    assert ids == {"none": [1, 3, 5, 7], "completion": [1, 2, 3, 5, 7], "all": list(range(1, 9))}
    # A snapshot without the preview column has no completion-judged step pairs.
    assert select_pairs(table.drop("preview"), "completion")["pair_id"].to_list() == [1, 3, 5, 7]
