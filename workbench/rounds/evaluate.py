"""The ``evaluation`` stage of a round: its checkpoint against its parent and against the base model
(the root of its lineage) on held-out prompts with fixed seeds, win rate by a scorer
(`workbench.evaluation`), and its implicit preference against people's on held-out pairs; and the
before/after image grid of the Rounds page.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import polars as pl

from datastore.consensus import majority_consensus
from datastore.datasets import DatasetFilters, judgments_frame
from datastore.records import model_lineage
from datastore.store import Store
from reward_models.shapes import held_out_captions
from workbench.generation_config import read_prompts
from workbench.rounds.config import RoundConfig
from workbench.rounds.context import RoundContext
from workbench.toy import DEFAULT_GUIDANCE


def held_out_prompts(config: RoundConfig) -> list[str]:
    """The held-out prompt set: ``eval_prompts_file``, else the shapes world's held-out captions."""
    return read_prompts(config.eval_prompts_file) if config.eval_prompts_file else list(held_out_captions())


def evaluation_prompts(config: RoundConfig) -> list[str]:
    """``eval_prompts`` prompts evenly spaced over the held-out set (the same every round)."""
    pool = held_out_prompts(config)
    n = min(config.eval_prompts, len(pool))
    return [pool[i * len(pool) // n] for i in range(n)]


def evaluation(ctx: RoundContext) -> dict:
    """Win rates of the round's checkpoint against its parent and the base; human accuracy."""
    import torch

    from reward_models.spec import scorer_from_spec
    from workbench.evaluation import compare_scores, score_pipeline
    from workbench.pipelines import checkpoint_folder, default_device, load_model, load_pipeline

    config, store, parent = ctx.config, ctx.store, ctx.parent_model_id
    prompts = evaluation_prompts(config)
    scorer = scorer_from_spec(config.eval_scorer)
    with store.read() as con:
        base = model_lineage(con, parent)[-1]["id"]
    sampling = {"num_inference_steps": config.eval_steps, "guidance_scale": DEFAULT_GUIDANCE}

    def scores(pipe) -> list[tuple[str, int, float]]:
        return score_pipeline(pipe, scorer, prompts, config.eval_seeds, progress=ctx.progress, **sampling)

    checkpoint = ctx.results["checkpoint"]["path"]
    candidate = scores(load_pipeline(checkpoint, device=default_device(), dtype=torch.float32))
    parent_scores = scores(load_model(store, parent))
    vs_parent = compare_scores(candidate, parent_scores)
    vs_base = vs_parent if base == parent else compare_scores(candidate, scores(load_model(store, base)))
    human = held_out_human_accuracy(
        store, checkpoint, checkpoint_folder(store, parent), config, ctx.results["generation"]["seed"]
    )
    return {
        "human": human,
        "prompts": len(prompts),
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "seeds": list(config.eval_seeds),
        "scorer": config.eval_scorer,
        **sampling,
        "base_model_id": base,
        "candidate_mean": vs_parent.candidate_mean,
        "parent_mean": vs_parent.reference_mean,
        "base_mean": vs_base.reference_mean,
        "vs_parent": vs_parent.win_rate.summary(),
        "vs_base": vs_base.win_rate.summary(),
    }


def held_out_human_accuracy(
    store: Store, candidate: str, reference: str, config: RoundConfig, seed: int, repeats: int = 4
) -> dict[str, Any]:
    """How often the candidate's implicit DPO preference agrees with people on held-out pairs.

    The pairs are final pairs on held-out prompts whose human majority vote picked a side (at
    most ``config.human_eval_pairs``, lowest ids first), scored by
    `training.accuracy.implicit_accuracy` at ``repeats`` draws each (0.5: no signal).
    """
    if not config.human_eval_pairs:
        return {"pairs": 0}
    import torch
    from diffusers import UNet2DConditionModel

    from training.accuracy import implicit_accuracy
    from training.data import PreferencePair
    from training.features import Features
    from training.parts import load_parts
    from training.sampling import native_side
    from workbench.pipelines import default_device

    held_out = set(held_out_prompts(config))
    votes = majority_consensus(
        judgments_frame(store, DatasetFilters(kinds=("final",), annotator_kinds=("human",)))
    )
    decided = votes.filter(pl.col("consensus") != "tie")
    with store.read() as con:
        rows = con.execute(
            "SELECT id, prompt, path_a, path_b FROM pair_media WHERE list_contains(?, id) ORDER BY id",
            [decided["pair_id"].to_list()],
        ).fetchall()
    winner = dict(decided.select("pair_id", "consensus").iter_rows())
    pairs = [
        PreferencePair(
            pair_id=pid,
            prompt=prompt,
            winner=store.media.resolve(a if winner[pid] == "a" else b),
            loser=store.media.resolve(b if winner[pid] == "a" else a),
        )
        for pid, prompt, a, b in rows
        if prompt in held_out
    ][: config.human_eval_pairs]
    if not pairs:
        return {"pairs": 0}
    device = default_device()
    parts = load_parts(candidate)
    for module in (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2):
        if module is not None:
            module.to(device, torch.float32).eval()
    ref_unet = (
        UNet2DConditionModel.from_pretrained(reference, subfolder="unet").to(device, torch.float32).eval()
    )
    features = Features(parts, native_side(parts.unet.config, parts.vae.config), device)
    accuracy, draws = implicit_accuracy(
        parts.unet, ref_unet, features, parts.noise_scheduler, pairs, seed=seed, repeats=repeats
    )
    return {"pairs": len(pairs), "draws": draws, "accuracy": accuracy}


def grid_images(
    store: Store, model_ids: list[int], prompts: list[str], seed: int = 0, steps: int = 20
) -> dict[int, list[Path]]:
    """One image per model and prompt from the same seed, for a before/after comparison.

    Images are drawn on first use and kept as ``<home>/rounds/grid/<model id>/<key>.png`` (the
    key hashes prompt, seed, steps and guidance), so a page shows them again without sampling.

    Returns:
        Per model id, the image files in prompt order.
    """
    from datastore.atomic import write_bytes
    from workbench.evaluation import sample_images
    from workbench.pipelines import load_model

    grid: dict[int, list[Path]] = {}
    for model_id in model_ids:
        folder = store.home / "rounds" / "grid" / str(model_id)
        files = [
            folder
            / f"{hashlib.sha256(f'{p}|{seed}|{steps}|{DEFAULT_GUIDANCE}'.encode()).hexdigest()[:16]}.png"
            for p in prompts
        ]
        todo = [p for p, f in zip(prompts, files, strict=True) if not f.is_file()]
        if todo:
            folder.mkdir(parents=True, exist_ok=True)
            pipe = load_model(store, model_id)
            drawn = sample_images(
                pipe, todo, (seed,), num_inference_steps=steps, guidance_scale=DEFAULT_GUIDANCE
            )
            for prompt, _, image in drawn:
                png = io.BytesIO()
                image.save(png, format="PNG")
                write_bytes(files[prompts.index(prompt)], png.getvalue())
        grid[model_id] = files
    return grid
