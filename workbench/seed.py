"""Seed a home with the shapes world, so a new user has pairs to judge within a minute."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from datastore.sql import scalar
from datastore.store import Store
from reward_models.shapes import ShapesOracle, train_captions
from workbench.generation import generate_pairs, generate_step_pools
from workbench.generation_config import GenerationConfig
from workbench.pipelines import load_pipeline
from workbench.toy import TOY_MODEL_DIR


@dataclass(frozen=True)
class SeedConfig:
    """What `workbench seed` generates.

    Attributes:
        prompts: training captions (a seeded random choice) that get final pairs.
        per_prompt: toy-model candidates per caption; every two of them form a pair.
        pool_prompts: captions that also get SPO step pools.
        pool_k: candidates per step pool.
        previews: step-pool previews (`GenerationConfig.previews`): completion stores the finished
            image each candidate leads to, which is what people judge step pairs by.
        gold_margin: a pair whose two images differ by at least this much in oracle score
            (share of the caption's attributes shown) becomes a gold pair with the oracle's answer.
        seed: base seed of the caption choice and of sampling.
    """

    prompts: int = 24
    per_prompt: int = 4
    pool_prompts: int = 6
    pool_k: int = 4
    previews: str = "completion"
    gold_margin: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class SeedReport:
    final_pairs: int
    step_pairs: int
    gold_pairs: int


def seed_shapes_world(
    store: Store, cfg: SeedConfig = SeedConfig(), *, model: Path | str = TOY_MODEL_DIR, progress: bool = True
) -> SeedReport | None:
    """Generate toy-model pairs and step pools on training captions and mark clear-cut pairs as gold.

    Returns None and does nothing when the store already holds pairs.
    """
    with store.read() as con:
        if scalar(con, "SELECT count(*) FROM pairs"):
            return None
    captions = random.Random(cfg.seed).sample(train_captions(), cfg.prompts)
    pipe = load_pipeline(str(model))
    generation = GenerationConfig(
        per_prompt=cfg.per_prompt, pool_k=cfg.pool_k, seed=cfg.seed, batch_size=32, previews=cfg.previews
    )
    final = generate_pairs(store, pipe, "toy", captions, generation, progress=progress)
    step_pairs = 0
    if cfg.pool_prompts:
        step_pairs = generate_step_pools(
            store, pipe, "toy", captions[: cfg.pool_prompts], generation, progress=progress
        ).pairs
    return SeedReport(final.pairs, step_pairs, mark_gold_pairs(store, cfg.gold_margin))


def mark_gold_pairs(store: Store, margin: float) -> int:
    """Give final pairs whose oracle scores differ by at least ``margin`` the oracle's answer as gold."""
    with store.read() as con:
        rows = con.execute(
            "SELECT id, prompt, path_a, path_b FROM pair_media "
            "WHERE kind = 'final' AND gold_outcome IS NULL ORDER BY id"
        ).fetchall()
    if not rows:
        return 0
    oracle = ShapesOracle()
    images_a = [store.media.open_image(r[2]) for r in rows]
    images_b = [store.media.open_image(r[3]) for r in rows]
    prompts = [r[1] for r in rows]
    score_a, score_b = oracle.score(images_a, prompts), oracle.score(images_b, prompts)
    gold = [(("a" if sa > sb else "b"), r[0]) for r, sa, sb in zip(rows, score_a, score_b, strict=True)
            if abs(sa - sb) >= margin]
    if gold:
        with store.write() as con:
            con.executemany("UPDATE pairs SET gold_outcome = ? WHERE id = ?", gold)
    return len(gold)
