"""The stages that collect a round's data: ``generation`` (the parent draws candidates and pairs),
``judgments`` (AI feedback and/or people) and ``dataset`` (the curated, immutable dataset version).

Each stage takes the `RoundContext` and returns the JSON-ready record of what it did.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl

from datastore.consensus import consensus
from datastore.datasets import DatasetFilters, create_dataset_version
from datastore.records import ANNOTATOR_KINDS, model_lineage
from datastore.sql import scalar
from datastore.store import Store
from labeling.ai_feedback import label_with_scorer
from labeling.curation import Curation, curated_judgments, load_curation
from reward_models.shapes import train_captions
from workbench.generation import generate_pairs, generate_step_pools
from workbench.generation_config import read_prompts
from workbench.rounds.config import RoundConfig
from workbench.rounds.context import RoundContext
from workbench.rounds.errors import RoundError, RoundWaiting
from workbench.rounds.reading import missing_human


def round_seed(store: Store, config: RoundConfig, parent_model_id: int) -> int:
    """The seed of a round's prompts, candidates and training: ``config.seed`` plus the round's
    depth in its lineage (1 from the base model), so the same config from the same parent
    reproduces the round in any home, and successive rounds draw different prompts."""
    with store.read() as con:
        return config.seed + len(model_lineage(con, parent_model_id))


def round_prompts(config: RoundConfig, seed: int) -> list[str]:
    """The prompts a round generates for: a seeded draw of ``num_prompts`` from the prompt set."""
    pool = read_prompts(config.prompts_file) if config.prompts_file else list(train_captions())
    return random.Random(seed).sample(pool, min(config.num_prompts, len(pool)))


def generation(ctx: RoundContext) -> dict:
    """The parent draws candidates for the round's prompts; the new pairs get the round's id."""
    from workbench.pipelines import load_model

    config, parent = ctx.config, ctx.parent_model_id
    seed = round_seed(ctx.store, config, parent)
    prompts = round_prompts(config, seed)
    with ctx.store.read() as con:
        name = scalar(con, "SELECT name FROM models WHERE id = ?", [parent])
    pipe = load_model(ctx.store, parent)
    gen = config.generation_config(seed)
    record = {"seed": seed, "prompts": prompts, "images": 0, "pools": 0, "skipped_pairs": 0}
    reports = []
    if config.final_pairs:
        reports.append(generate_pairs(ctx.store, pipe, name, prompts, gen, progress=ctx.progress))
    if config.step_pools:
        reports.append(generate_step_pools(ctx.store, pipe, name, prompts, gen, progress=ctx.progress))
    for report in reports:
        record["images"] += report.images
        record["pools"] += report.pools
        record["skipped_pairs"] += report.skipped_pairs
    # The new pairs are those whose first image this parent drew with this round's base seed.
    with ctx.store.write() as con:
        con.execute(
            "UPDATE pairs SET round_id = ? WHERE round_id IS NULL AND image_a IN ("
            "SELECT i.id FROM images i JOIN generations g ON g.id = i.generation_id "
            "WHERE g.model_id = ? AND json_extract(g.params, '$.base_seed')::BIGINT = ?)",
            [ctx.round_id, parent, seed],
        )
        record["pairs"] = scalar(con, "SELECT count(*) FROM pairs WHERE round_id = ?", [ctx.round_id])
    if not record["pairs"]:
        raise RoundError(
            f"round {ctx.round_id} drew no new pair: an earlier round of this home drew the same candidates "
            f"(model {parent}, seed {seed}); give the round another seed"
        )
    return record


def judgments(ctx: RoundContext) -> dict:
    """AI feedback from the scorer, then a count of the round's judgments.

    Raises:
        RoundWaiting: the round is judged by people and some pairs lack their judgments.
    """
    from reward_models.spec import scorer_from_spec

    config, round_id = ctx.config, ctx.round_id
    record: dict[str, Any] = {}
    if config.feedback in ("ai", "both"):
        report = label_with_scorer(
            ctx.store,
            scorer_from_spec(config.scorer),
            kinds=config.pair_kinds(),
            tie_margin=config.tie_margin,
            round_id=round_id,
            show_progress=ctx.progress,
        )
        record["annotator"] = report.annotator
    with ctx.store.read() as con:
        counts = dict(
            con.execute(
                "SELECT a.kind, count(*) FROM judgments j JOIN annotators a ON a.id = j.annotator_id "
                "JOIN pairs p ON p.id = j.pair_id WHERE p.round_id = ? AND NOT j.withdrawn GROUP BY a.kind",
                [round_id],
            ).fetchall()
        )
        if config.feedback in ("human", "both"):
            missing, pairs = missing_human(con, round_id, config.human_judgments_per_pair)
            if missing:
                raise RoundWaiting(round_id, missing, pairs)
    record.update(ai=counts.get("ai", 0), human=counts.get("human", 0))
    record["total"] = record["ai"] + record["human"]
    return record


def round_curation(config: RoundConfig, round_id: int, store: Store) -> Curation:
    """The round's curation: the saved one ``config.curation.saved`` names, else one from the
    config's feedback and curation settings."""
    settings = config.curation
    if settings.saved:
        return load_curation(store, settings.saved)
    filters = DatasetFilters(
        kinds=config.pair_kinds(),
        annotator_kinds=ANNOTATOR_KINDS[config.feedback],
        min_agreement=settings.min_agreement,
        include_ties=settings.include_ties,
        step_judgments=settings.step_judgments,
    )
    return Curation(name=f"round-{round_id}", method=settings.method, filters=filters)


def dataset(ctx: RoundContext) -> dict:
    """The round's judged pairs, curated, as an immutable dataset version."""
    store, round_id = ctx.store, ctx.round_id
    curation = round_curation(ctx.config, round_id, store)
    curated = curated_judgments(store, curation)
    with store.read() as con:
        mine = [r[0] for r in con.execute("SELECT id FROM pairs WHERE round_id = ?", [round_id]).fetchall()]
    # Only this round's pairs: earlier rounds' pairs were drawn by other models.
    judged = curated.judgments.filter(pl.col("pair_id").is_in(mine))
    if judged.is_empty():
        raise RoundError(
            f"round {round_id}: no judgment of its {len(mine)} pairs passes curation {curation.name!r}"
        )
    record = {"name": curation.name, "method": curation.method, **curation.settings(), "round": round_id}
    version = create_dataset_version(
        store,
        f"round-{round_id}",
        curated.filters,
        consensus=consensus(judged, curation.method),
        curation=record,
    )
    with store.write() as con:
        con.execute("UPDATE rounds SET dataset_version = ? WHERE id = ?", [version.id, round_id])
    return {
        "id": version.id,
        "content_hash": version.content_hash,
        "n_pairs": version.n_pairs,
        "path": str(version.path),
        "curation": record,
        "counts": version.counts,
    }
