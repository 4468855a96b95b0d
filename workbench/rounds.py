"""Closed preference rounds: generate, judge, curate, train, evaluate, register, repeat.

A round starts from a parent checkpoint registered in the store and goes through these stages,
each recorded in the round's ``results`` (JSON) as soon as it is done, so that re-running a
round continues where it stopped and never redoes a finished stage:

1. ``generation``: the parent draws candidates for a seeded choice of prompts (final pairs and/or
   SPO step pools); the new pairs get the round's id.
2. ``judgments``: AI feedback from a scorer, human judgments, or both. A round that needs human
   judgments raises `RoundWaiting` with the number missing; judge the pairs, then resume.
3. ``dataset``: the round's judged pairs become an immutable dataset version (id + content hash).
4. ``training``: Diffusion-DPO, SPO, or the step-aware preference model followed by SPO with it
   as the scorer, in this process, in ``runs/round-<id>-<recipe>/`` (a killed run resumes there).
5. ``checkpoint``: a LoRA result is fused into the parent and saved as a full pipeline folder,
   ``models/round-<id>/``. Fusing (rather than stacking adapters) keeps every registered
   checkpoint a plain ``from_pretrained`` folder, so the next round trains a fresh LoRA on it
   and any checkpoint loads without its ancestors. The LoRA weights stay in the run folder.
6. ``evaluation``: the checkpoint against its parent and against the base model (the root of its
   lineage) on held-out prompts with fixed seeds: win rate by a scorer (`workbench.evaluation`).
7. ``register``: the checkpoint becomes a model row with parent, round and dataset version, so
   `datastore.records.model_lineage` walks back to the base; it is the parent of the next round.

The round's config, seeds, prompts, dataset version id and hash, run folder, recipe config and
metrics are all in the ``rounds`` row, which is what it takes to reproduce the round.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from datastore.datasets import DatasetFilters, create_dataset_version, judgments_frame, majority_consensus
from datastore.errors import NotFoundError, StoreBusyError
from datastore.lock import file_lock
from datastore.records import model_lineage, register_model
from datastore.sql import first_row, scalar
from datastore.store import Store
from labeling.ai_feedback import label_with_scorer
from labeling.curation import Curation, consensus, curated_judgments, load_curation
from reward_models.shapes import held_out_captions, train_captions
from training.config import ConfigError, DPOConfig, SPMConfig, SPOConfig
from workbench.errors import WorkbenchError
from workbench.generation import GenerationConfig, generate_pairs, generate_step_pools, read_prompts
from workbench.jobs import Job, launch_job
from workbench.registry import register_run
from workbench.toy import DEFAULT_GUIDANCE, TOY_MODEL_DIR

# torch, diffusers and transformers are imported where a stage needs them, so that reading rounds
# (`workbench round list`, the Rounds page's tables) does not load them.
if TYPE_CHECKING:
    import torch

    from workbench.pipelines import SDPipeline

Feedback = Literal["ai", "human", "both"]
Recipe = Literal["dpo", "spo", "spm-spo"]
STAGES = ("generation", "judgments", "dataset", "training", "checkpoint", "evaluation", "register")
HUMAN_SOURCES = ("app", "labelstudio")
BASE_MODEL_NAME = "toy"
"""Name under which the shipped toy model is registered as the base of a home that has none."""


class RoundError(WorkbenchError):
    """A round cannot run: a bad setting, a missing parent, or a round that does not exist."""


class RoundWaiting(WorkbenchError):
    """A round stopped to wait for human judgments; resume it once they are in.

    Attributes:
        round_id: the waiting round.
        missing: human judgments still needed.
        pairs: the round's pairs that still need one or more.
    """

    def __init__(self, round_id: int, missing: int, pairs: int):
        self.round_id, self.missing, self.pairs = round_id, missing, pairs
        super().__init__(
            f"round {round_id} waits for {missing} human judgments on {pairs} pairs: judge them on the "
            f"Annotate / Noisy steps pages or in Label Studio, then `workbench round resume {round_id}`"
        )


def option(default: Any, help: str) -> Any:
    """A config field with its documentation in ``metadata["help"]`` (the CLI's help text)."""
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RoundConfig:
    """What one round does. Stored with the round, so a round resumes and reproduces from it."""

    prompts_file: Path | None = option(
        None,
        help="Prompt set, one per line (or .jsonl with a prompt field); default the shapes world's training captions.",
    )
    num_prompts: int = option(
        32, help="Prompts drawn (seeded by seed and round id) from the prompt set each round."
    )
    per_prompt: int = option(4, help="Finished candidates per prompt for final pairs.")
    pairing: Literal["all", "adjacent", "random"] = option(
        "all", help="Which candidates of a prompt (or pool) are paired: all, adjacent or random."
    )
    final_pairs: bool = option(True, help="Generate finished candidates and pair them.")
    step_pools: bool = option(False, help="Generate SPO step pools and pair their candidates.")
    pool_k: int = option(4, help="Candidates per step pool.")
    num_inference_steps: int = option(20, help="DDIM steps when generating candidates.")
    guidance_scale: float = option(
        DEFAULT_GUIDANCE,
        help="Classifier-free guidance when generating candidates (the evaluation's, so data is on-policy).",
    )
    seed: int = option(
        0,
        help="Base seed: a round r models away from the base draws prompts, candidates and training noise with seed + r.",
    )
    feedback: Feedback = option(
        "ai", help="Who judges: ai (the scorer, no person), human (the round waits for people) or both."
    )
    scorer: str = option("shapes-oracle", help="AI feedback scorer spec (see reward_models.spec).")
    tie_margin: float = option(0.0, help="AI judgments with a score difference at most this are ties.")
    human_judgments_per_pair: int = option(
        1, help="Human judgments each pair needs before training (human, both)."
    )
    min_agreement: float = option(0.0, help="Curation: leave out pairs whose judgments agree less than this.")
    include_ties: bool = option(False, help="Curation: keep pairs whose consensus is a tie.")
    consensus: Literal["majority", "dawid_skene"] = option(
        "majority", help="Curation: per-pair label by majority vote or by Dawid-Skene annotator weighting."
    )
    curation: str | None = option(
        None,
        help="A saved curation (`workbench curation save`) to use instead of the feedback, min_agreement, "
        "include_ties and consensus settings; restricted to the round's pairs either way.",
    )
    recipe: Recipe = option(
        "dpo",
        help="dpo: Diffusion-DPO on the round's final pairs. spo: SPO online with the scorer. spm-spo: train "
        "the step-aware preference model on the round's judgments, then SPO with it as the step judge.",
    )
    training: tuple[str, ...] = option(
        (),
        help="Recipe config overrides KEY=VALUE (VALUE as JSON, else text), e.g. learning_rate=2e-4; with "
        "recipe spm-spo they go to the SPM and spo_training to the SPO stage.",
    )
    spo_training: tuple[str, ...] = option(
        (), help="SPO config overrides KEY=VALUE for recipe spm-spo's second stage."
    )
    eval_prompts_file: Path | None = option(
        None, help="Held-out evaluation prompts; default the shapes world's held-out captions."
    )
    eval_prompts: int = option(48, help="Evaluation prompts, evenly spaced over the held-out set.")
    eval_seeds: tuple[int, ...] = option((0, 1), help="Seeds every evaluation prompt is drawn with.")
    eval_scorer: str = option("shapes-oracle", help="Scorer spec that decides evaluation wins.")
    eval_steps: int = option(20, help="DDIM steps of evaluation images.")
    human_eval_pairs: int = option(
        256,
        help="At most this many human-judged pairs on held-out prompts score the new model's implicit "
        "preference against its parent's (0: skip).",
    )

    def __post_init__(self) -> None:
        self.prompts_file = None if self.prompts_file is None else Path(self.prompts_file)
        self.eval_prompts_file = None if self.eval_prompts_file is None else Path(self.eval_prompts_file)
        self.training, self.spo_training = tuple(self.training), tuple(self.spo_training)
        self.eval_seeds = tuple(int(s) for s in self.eval_seeds)
        choices = {
            "feedback": ("ai", "human", "both"),
            "recipe": ("dpo", "spo", "spm-spo"),
            "pairing": ("all", "adjacent", "random"),
            "consensus": ("majority", "dawid_skene"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise RoundError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.human_eval_pairs < 0:
            raise RoundError(f"human_eval_pairs must be >= 0, got {self.human_eval_pairs}")
        for name in (
            "num_prompts",
            "num_inference_steps",
            "human_judgments_per_pair",
            "eval_prompts",
            "eval_steps",
        ):
            if getattr(self, name) < 1:
                raise RoundError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("per_prompt", "pool_k"):
            if getattr(self, name) < 2:
                raise RoundError(
                    f"{name} must be >= 2 (a pair needs two candidates), got {getattr(self, name)}"
                )
        if not (self.final_pairs or self.step_pools):
            raise RoundError("a round needs final_pairs or step_pools (or both)")
        if self.recipe == "dpo" and not self.final_pairs:
            raise RoundError("recipe dpo trains on final pairs: set final_pairs")
        if not self.eval_seeds:
            raise RoundError("eval_seeds needs at least one seed")
        if self.tie_margin < 0 or not 0 <= self.min_agreement <= 1:
            raise RoundError(
                f"need tie_margin >= 0 and min_agreement in [0, 1], got {self.tie_margin}, {self.min_agreement}"
            )
        parse_overrides(self.training)
        parse_overrides(self.spo_training)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (paths as text, tuples as lists)."""
        out = asdict(self)
        for key, value in out.items():
            out[key] = (
                str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
            )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundConfig:
        """The config `to_dict` wrote; unknown keys are an error."""
        unknown = sorted(data.keys() - {f.name for f in fields(cls)})
        if unknown:
            raise RoundError(f"unknown round options: {', '.join(unknown)}")
        if data.get("recipe") == "spm":  # the name recipe spm-spo had in rounds recorded before it
            data = {**data, "recipe": "spm-spo"}
        return cls(**data)


def parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    """``("beta=5000", "mode=lora")`` -> ``{"beta": 5000, "mode": "lora"}`` (values as JSON, else text)."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise RoundError(f"a training override must be KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


DPO_DEFAULTS: dict[str, Any] = {
    "mode": "lora",
    "learning_rate": 1e-3,
    "beta": 5000.0,
    "batch_size": 16,
    "max_steps": 300,
    "warmup_fraction": 0.1,
    "random_flip": False,
    "cache_latents": True,
}
"""DPO settings of a round where its ``training`` overrides say nothing (measured on the toy model).
No mirroring: captions name positions, and a mirrored winner no longer matches its caption."""

SPO_DEFAULTS: dict[str, Any] = {
    "max_steps": 20,
    "prompts_per_step": 4,
    "train_batch_size": 32,
    "score_scale": 10.0,
    "warmup_steps": 0,
    "max_timestep": 951,
}
"""SPO settings of a round where its overrides say nothing; score_scale 10 suits scores in [0, 1].
Pools at every step: on the shapes world the first steps (t 951-801) decide colour and shape as
often as any later step (benchmarks/RESULTS.md, "Where the shapes world decides")."""


@dataclass(frozen=True)
class RoundSummary:
    """A round as recorded: status, lineage, config and results (see the module docstring)."""

    id: int
    status: str
    parent_model_id: int
    model_id: int | None
    config: dict
    results: dict
    dataset_version: str | None
    run_dir: str | None
    error: str | None

    def row(self) -> dict[str, Any]:
        """Flat figures for a per-round table: pairs, judgments, training time, win rates."""
        r = self.results
        evaluation = r.get("evaluation", {})
        return {
            "round": self.id,
            "status": self.status,
            "parent": self.parent_model_id,
            "model": self.model_id,
            "pairs": r.get("generation", {}).get("pairs"),
            "judgments": r.get("judgments", {}).get("total"),
            "dataset_pairs": r.get("dataset", {}).get("n_pairs"),
            "train_s": r.get("training", {}).get("seconds"),
            "win_vs_parent": evaluation.get("vs_parent", {}).get("win_rate"),
            "win_vs_base": evaluation.get("vs_base", {}).get("win_rate"),
            "score": evaluation.get("candidate_mean"),
            "human_accuracy": evaluation.get("human", {}).get("accuracy"),
        }


def ensure_base_model(store: Store) -> int:
    """The id of the home's base model: the shipped toy model, registered as ``toy`` if missing."""
    with store.write() as con:
        known = scalar(
            con, "SELECT min(id) FROM models WHERE path = ? AND kind = 'base'", [str(TOY_MODEL_DIR)]
        )
        return known or register_model(con, BASE_MODEL_NAME, str(TOY_MODEL_DIR), kind="base")


def checkpoint_folder(store: Store, model_id: int) -> str:
    """A ``from_pretrained`` folder (or hub id) of a registered model; a LoRA model is fused into
    its ancestors once and kept as ``models/fused-<id>/``."""
    _, path, kind = _model_row(store, model_id)
    if kind != "lora":
        return path
    folder = store.models_dir / f"fused-{model_id}"
    if not folder.exists():
        tmp = store.models_dir / f".tmp-fused-{model_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        load_model(store, model_id, device="cpu").save_pretrained(tmp)
        tmp.rename(folder)
    return str(folder)


def load_model(store: Store, model_id: int, device: str | torch.device | None = None) -> SDPipeline:
    """A registered model as a pipeline; a ``lora`` model is its nearest non-LoRA ancestor plus
    every LoRA on the way, applied oldest first and fused."""
    import torch

    from workbench.pipelines import load_pipeline

    with store.read() as con:
        chain = model_lineage(con, model_id)
    loras = []
    for model in chain:
        if model["kind"] != "lora":
            break
        loras.append(model)
    else:
        raise RoundError(f"model {model_id} is a LoRA with no full or base ancestor to apply it to")
    pipe = load_pipeline(chain[len(loras)]["path"], device=device, dtype=torch.float32)
    for lora in reversed(loras):
        pipe.load_lora_weights(lora["path"])
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    return pipe


def run_round(
    store: Store, config: RoundConfig, parent_model_id: int | None = None, *, progress: bool = False
) -> RoundSummary:
    """Creates a round from ``parent_model_id`` (default: the base model) and runs it to the end.

    Raises:
        RoundWaiting: the round needs human judgments first (`resume_round` continues it).
        RoundError: bad settings or an unknown parent; other errors of a stage mark the round failed.
    """
    parent = ensure_base_model(store) if parent_model_id is None else parent_model_id
    with store.write() as con:
        kind = scalar(con, "SELECT kind FROM models WHERE id = ?", [parent])
        if kind not in ("base", "full", "lora"):
            raise RoundError(
                f"parent model {parent} is not a text-to-image checkpoint registered in this home"
                + (f" (it is a {kind})" if kind else "")
            )
        round_id = scalar(
            con,
            "INSERT INTO rounds (parent_model_id, status, config, results) VALUES (?, 'created', ?, '{}') RETURNING id",
            [parent, json.dumps(config.to_dict())],
        )
    return resume_round(store, round_id, progress=progress)


def run_auto(
    store: Store,
    config: RoundConfig,
    rounds: int,
    parent_model_id: int | None = None,
    *,
    progress: bool = False,
    on_round: Callable[[RoundSummary], None] | None = None,
) -> list[RoundSummary]:
    """Runs ``rounds`` AI-feedback rounds, each round's checkpoint the parent of the next."""
    if config.feedback != "ai":
        raise RoundError(f"automatic rounds need feedback 'ai' (no person waits), got {config.feedback!r}")
    if rounds < 1:
        raise RoundError(f"rounds must be >= 1, got {rounds}")
    done: list[RoundSummary] = []
    parent = parent_model_id
    for _ in range(rounds):
        summary = run_round(store, config, parent, progress=progress)
        done.append(summary)
        if on_round is not None:
            on_round(summary)
        parent = summary.model_id
    return done


def resume_round(store: Store, round_id: int, *, progress: bool = False) -> RoundSummary:
    """Runs a round's remaining stages with its stored config; a finished round is returned as it is.

    Raises:
        RoundError: another process is running or resuming this round.
    """
    get_round(store, round_id)  # a round that does not exist is named as such
    with round_lock(store, round_id):
        return _resume(store, round_id, progress)


@contextmanager
def round_lock(store: Store, round_id: int) -> Iterator[None]:
    """Held while a process runs a round's stages; the kernel drops it when that process dies.

    Raises:
        RoundError: another process holds it.
    """
    held = ExitStack()
    try:
        held.enter_context(file_lock(store.runs_dir / f".round-{round_id}.lock", exclusive=True, timeout_s=0.0))
    except StoreBusyError:
        raise RoundError(
            f"round {round_id} is already running in another process: wait for it to finish or fail "
            "(`workbench round list` shows its status), then resume it"
        ) from None
    with held:
        yield


def _resume(store: Store, round_id: int, progress: bool) -> RoundSummary:
    summary = get_round(store, round_id)
    if summary.status == "finished":
        return summary
    config = RoundConfig.from_dict(summary.config)
    results = dict(summary.results)
    _update(store, round_id, status="running", started_at=True, error=None)
    try:
        for stage in STAGES:
            if stage in results:
                continue
            _update(store, round_id, status=stage)
            started, started_cpu = time.perf_counter(), time.process_time()
            results[stage] = _STAGE_FUNCTIONS[stage](
                store, round_id, summary.parent_model_id, config, results, progress
            )
            results.setdefault("seconds", {})[stage] = round(time.perf_counter() - started, 2)
            # CPU seconds of this process: the compute a stage used, undisturbed by other load.
            results.setdefault("cpu_seconds", {})[stage] = round(time.process_time() - started_cpu, 2)
            _update(store, round_id, results=results)
    except RoundWaiting:
        _update(store, round_id, status="awaiting_judgments", results=results)
        raise
    except BaseException as e:
        _update(store, round_id, status="failed", error=f"{type(e).__name__}: {e}", results=results)
        raise
    _update(store, round_id, status="finished", finished_at=True)
    return get_round(store, round_id)


def _update(
    store: Store, round_id: int, *, started_at: bool = False, finished_at: bool = False, **columns: Any
) -> None:
    sets, params = [], []
    for name, value in columns.items():
        sets.append(f"{name} = ?")
        params.append(json.dumps(value) if name == "results" else value)
    if started_at:
        sets.append("started_at = coalesce(started_at, current_timestamp)")
    if finished_at:
        sets.append("finished_at = current_timestamp")
    with store.write() as con:
        con.execute(f"UPDATE rounds SET {', '.join(sets)} WHERE id = ?", [*params, round_id])


def get_round(store: Store, round_id: int) -> RoundSummary:
    """A round as recorded.

    Raises:
        RoundError: no such round.
    """
    with store.read() as con:
        row = first_row(
            con,
            "SELECT id, status, parent_model_id, model_id, config, results, dataset_version, run_dir, error "
            "FROM rounds WHERE id = ?",
            [round_id],
        )
    if row is None:
        raise RoundError(f"round {round_id} does not exist; `workbench round list` shows the rounds")
    return RoundSummary(
        id=row[0],
        status=row[1],
        parent_model_id=row[2],
        model_id=row[3],
        config=json.loads(row[4] or "{}"),
        results=json.loads(row[5] or "{}"),
        dataset_version=row[6],
        run_dir=row[7],
        error=row[8],
    )


def list_rounds(store: Store) -> list[RoundSummary]:
    """Every round, oldest first."""
    with store.read() as con:
        ids = [r[0] for r in con.execute("SELECT id FROM rounds ORDER BY id").fetchall()]
    return [get_round(store, i) for i in ids]


def rounds_table(summaries: list[RoundSummary]) -> pl.DataFrame:
    """One row per round (`RoundSummary.row`)."""
    schema = {
        "round": pl.Int64,
        "status": pl.String,
        "parent": pl.Int64,
        "model": pl.Int64,
        "pairs": pl.Int64,
        "judgments": pl.Int64,
        "dataset_pairs": pl.Int64,
        "train_s": pl.Float64,
        "win_vs_parent": pl.Float64,
        "win_vs_base": pl.Float64,
        "score": pl.Float64,
        "human_accuracy": pl.Float64,
    }
    return pl.DataFrame([s.row() for s in summaries], schema=schema)


# Stages. Each takes (store, round_id, parent_model_id, config, results so far, progress) and
# returns the JSON-ready record of what it did.


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


def _model_row(store: Store, model_id: int) -> tuple[str, str, str]:
    with store.read() as con:
        row = first_row(con, "SELECT name, path, kind FROM models WHERE id = ?", [model_id])
    if row is None:
        raise NotFoundError(f"model {model_id} does not exist")
    return row


def _generation(store, round_id, parent, config, results, progress) -> dict:
    seed = round_seed(store, config, parent)
    prompts = round_prompts(config, seed)
    name, _, _ = _model_row(store, parent)
    pipe = load_model(store, parent)
    gen = GenerationConfig(
        per_prompt=config.per_prompt,
        pool_k=config.pool_k,
        pairing=config.pairing,
        seed=seed,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        batch_size=32,
    )
    record = {"seed": seed, "prompts": prompts, "images": 0, "pools": 0, "skipped_pairs": 0}
    reports = []
    if config.final_pairs:
        reports.append(generate_pairs(store, pipe, name, prompts, gen, progress=progress))
    if config.step_pools:
        reports.append(generate_step_pools(store, pipe, name, prompts, gen, progress=progress))
    for report in reports:
        record["images"] += report.images
        record["pools"] += report.pools
        record["skipped_pairs"] += report.skipped_pairs
    # The new pairs are those whose first image this parent drew with this round's base seed.
    with store.write() as con:
        con.execute(
            "UPDATE pairs SET round_id = ? WHERE round_id IS NULL AND image_a IN ("
            "SELECT i.id FROM images i JOIN generations g ON g.id = i.generation_id "
            "WHERE g.model_id = ? AND json_extract(g.params, '$.base_seed')::BIGINT = ?)",
            [round_id, parent, seed],
        )
        record["pairs"] = scalar(con, "SELECT count(*) FROM pairs WHERE round_id = ?", [round_id])
    if not record["pairs"]:
        raise RoundError(
            f"round {round_id} drew no new pair: an earlier round of this home drew the same candidates "
            f"(model {parent}, seed {seed}); give the round another seed"
        )
    return record


def _judgments(store, round_id, parent, config, results, progress) -> dict:
    from reward_models.spec import scorer_from_spec

    kinds = _round_kinds(config)
    record: dict[str, Any] = {}
    if config.feedback in ("ai", "both"):
        report = label_with_scorer(
            store,
            scorer_from_spec(config.scorer),
            kinds=kinds,
            tie_margin=config.tie_margin,
            round_id=round_id,
            show_progress=progress,
        )
        record["annotator"] = report.annotator
    with store.read() as con:
        counts = dict(
            con.execute(
                "SELECT a.kind, count(*) FROM judgments j JOIN annotators a ON a.id = j.annotator_id "
                "JOIN pairs p ON p.id = j.pair_id WHERE p.round_id = ? AND NOT j.withdrawn GROUP BY a.kind",
                [round_id],
            ).fetchall()
        )
        if config.feedback in ("human", "both"):
            missing, pairs = _missing_human(con, round_id, config.human_judgments_per_pair)
            if missing:
                raise RoundWaiting(round_id, missing, pairs)
    record.update(ai=counts.get("ai", 0), human=counts.get("human", 0))
    record["total"] = record["ai"] + record["human"]
    return record


def _missing_human(con, round_id: int, per_pair: int) -> tuple[int, int]:
    """(human judgments still needed, pairs that need one or more) for a round."""
    missing, pairs = con.execute(
        "SELECT coalesce(sum(? - n), 0), count(*) FROM ("
        "  SELECT p.id, count(j.id) AS n FROM pairs p LEFT JOIN judgments j ON j.pair_id = p.id "
        "  AND NOT j.withdrawn AND j.annotator_id IN (SELECT id FROM annotators WHERE kind = 'human') "
        "  WHERE p.round_id = ? GROUP BY p.id) WHERE n < ?",
        [per_pair, round_id, per_pair],
    ).fetchall()[0]
    return int(missing), int(pairs)


@dataclass(frozen=True)
class HumanNeeds:
    """Where a round judged by people stands.

    Attributes:
        feedback: who judges the round: ``human`` or ``both`` (people and the AI scorer).
        per_pair: human judgments each of the round's pairs needs.
        missing: human judgments still needed; pairs: the round's pairs that need one or more.
        by_annotator: human judgments given on the round's pairs so far, by annotator name.
        ai: AI judgments of the round's pairs.
    """

    feedback: str
    per_pair: int
    missing: int
    pairs: int
    by_annotator: dict[str, int]
    ai: int


def human_needs(store: Store, round_id: int) -> HumanNeeds:
    """How many human judgments a round still needs, and who gave the ones it has.

    Raises:
        RoundError: no such round, or a round judged by the AI scorer alone.
    """
    summary = get_round(store, round_id)
    config = RoundConfig.from_dict(summary.config)
    if config.feedback == "ai":
        raise RoundError(f"round {round_id} is judged by the AI scorer alone; it needs no people")
    with store.read() as con:
        missing, pairs = _missing_human(con, round_id, config.human_judgments_per_pair)
        rows = con.execute(
            "SELECT a.name, a.kind, count(*) FROM judgments j JOIN annotators a ON a.id = j.annotator_id "
            "JOIN pairs p ON p.id = j.pair_id WHERE p.round_id = ? AND NOT j.withdrawn "
            "GROUP BY a.name, a.kind ORDER BY count(*) DESC, a.name",
            [round_id],
        ).fetchall()
    return HumanNeeds(
        feedback=config.feedback,
        per_pair=config.human_judgments_per_pair,
        missing=missing,
        pairs=pairs,
        by_annotator={name: n for name, kind, n in rows if kind == "human"},
        ai=sum(n for _, kind, n in rows if kind == "ai"),
    )


def _round_kinds(config: RoundConfig) -> tuple[str, ...]:
    return tuple(k for k, on in (("final", config.final_pairs), ("step", config.step_pools)) if on)


def round_curation(config: RoundConfig, round_id: int, store: Store) -> Curation:
    """The round's curation: the saved one ``config.curation`` names, else one from the config's
    feedback, consensus method, agreement and tie settings."""
    if config.curation:
        return load_curation(store, config.curation)
    filters = DatasetFilters(
        kinds=_round_kinds(config),
        annotator_kinds={"ai": ("ai",), "human": ("human",), "both": ("human", "ai")}[config.feedback],
        min_agreement=config.min_agreement,
        include_ties=config.include_ties,
    )
    return Curation(name=f"round-{round_id}", method=config.consensus, filters=filters)


def _dataset(store, round_id, parent, config, results, progress) -> dict:
    curation = round_curation(config, round_id, store)
    curated = curated_judgments(store, curation)
    with store.read() as con:
        mine = [r[0] for r in con.execute("SELECT id FROM pairs WHERE round_id = ?", [round_id]).fetchall()]
    # Only this round's pairs: earlier rounds' pairs were drawn by other models.
    judgments = curated.judgments.filter(pl.col("pair_id").is_in(mine))
    if judgments.is_empty():
        raise RoundError(
            f"round {round_id}: no judgment of its {len(mine)} pairs passes curation {curation.name!r}"
        )
    record = {"name": curation.name, "method": curation.method, **curation.settings(), "round": round_id}
    version = create_dataset_version(
        store,
        f"round-{round_id}",
        curated.filters,
        consensus=consensus(judgments, curation.method),
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


def _native_resolution(model_path: str) -> int:
    """Image side the model draws natively (UNet sample size x VAE factor), read from its configs."""
    root = Path(model_path)
    unet = json.loads((root / "unet" / "config.json").read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def _recipe_config(config_class: type, defaults: dict, overrides: tuple[str, ...], **required: Any):
    values = {**defaults, **parse_overrides(overrides), **required}
    try:
        return config_class(**values)
    except (ConfigError, TypeError) as e:
        raise RoundError(f"{config_class.__name__}: {e}") from e


def _training(store, round_id, parent, config, results, progress) -> dict:
    from training import dpo, spm, spo

    parent_path = checkpoint_folder(store, parent)
    run_dir = store.runs_dir / f"round-{round_id}-{config.recipe}"
    resolution = _native_resolution(parent_path) if Path(parent_path).is_dir() else 512
    prompts = results["generation"]["prompts"]
    dataset = Path(results["dataset"]["path"])
    with store.write() as con:
        con.execute("UPDATE rounds SET run_dir = ? WHERE id = ?", [str(run_dir), round_id])
    started = time.perf_counter()
    record: dict[str, Any] = {"recipe": config.recipe, "run_dir": str(run_dir)}
    spo_defaults = {**SPO_DEFAULTS, "resolution": resolution, "seed": results["generation"]["seed"]}
    if config.recipe == "dpo":
        cfg = _recipe_config(
            DPOConfig,
            {
                **DPO_DEFAULTS,
                "resolution": resolution,
                "seed": results["generation"]["seed"],
                "checkpoint_every": 10_000,
            },
            config.training,
            pretrained_model=parent_path,
            dataset=dataset,
            output_dir=run_dir,
        )
        cfg.checkpoint_every = min(cfg.checkpoint_every, cfg.max_steps)
        final = dpo.main(cfg)
        record.update(config=cfg.to_dict(), lora=cfg.mode != "full", final=str(final))
    elif config.recipe == "spo":
        cfg = _recipe_config(
            SPOConfig,
            spo_defaults,
            config.training,
            pretrained_model=parent_path,
            output_dir=run_dir,
            prompts=tuple(prompts),
            scorer=config.scorer,
        )
        final = spo.main(cfg)
        record.update(config=cfg.to_dict(), lora=True, final=str(final))
    else:
        spm_cfg = _recipe_config(
            SPMConfig,
            {"resolution": resolution, "seed": results["generation"]["seed"]},
            config.training,
            pretrained_model=parent_path,
            dataset=dataset,
            output_dir=run_dir / "spm",
        )
        spm_final = spm.main(spm_cfg)
        cfg = _recipe_config(
            SPOConfig,
            {**spo_defaults, "score_scale": 1.0},  # the SPM scores on PickScore's logit scale
            config.spo_training,
            pretrained_model=parent_path,
            output_dir=run_dir / "spo",
            prompts=tuple(prompts),
            scorer=f"spm:{spm_final}",
        )
        final = spo.main(cfg)
        record.update(
            spm_config=spm_cfg.to_dict(),
            spm_final=str(spm_final),
            config=cfg.to_dict(),
            lora=True,
            final=str(final),
        )
    record["seconds"] = round(time.perf_counter() - started, 2)
    metrics_file = Path(record["config"]["output_dir"]) / "metrics.jsonl"
    lines = metrics_file.read_text().splitlines() if metrics_file.exists() else []
    record["metrics_file"] = str(metrics_file)
    record["last_metrics"] = json.loads(lines[-1]) if lines else {}
    return record


def _checkpoint(store, round_id, parent, config, results, progress) -> dict:
    training = results["training"]
    if not training["lora"]:
        return {"path": training["final"], "fused": False}
    folder = store.models_dir / f"round-{round_id}"
    if not folder.exists():  # written whole by an earlier attempt that stopped before recording it
        tmp = store.models_dir / f".tmp-round-{round_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe = load_model(store, parent, device="cpu")
        pipe.load_lora_weights(training["final"])
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        pipe.save_pretrained(tmp)
        tmp.rename(folder)  # a folder under models/ is always complete
    return {"path": str(folder), "fused": True, "lora": training["final"]}


def held_out_prompts(config: RoundConfig) -> list[str]:
    """The held-out prompt set: ``eval_prompts_file``, else the shapes world's held-out captions."""
    return read_prompts(config.eval_prompts_file) if config.eval_prompts_file else list(held_out_captions())


def evaluation_prompts(config: RoundConfig) -> list[str]:
    """``eval_prompts`` prompts evenly spaced over the held-out set (the same every round)."""
    pool = held_out_prompts(config)
    n = min(config.eval_prompts, len(pool))
    return [pool[i * len(pool) // n] for i in range(n)]


def _evaluation(store, round_id, parent, config, results, progress) -> dict:
    import torch

    from reward_models.spec import scorer_from_spec
    from workbench.evaluation import score_pipeline, win_rate
    from workbench.pipelines import default_device, load_pipeline

    prompts = evaluation_prompts(config)
    scorer = scorer_from_spec(config.eval_scorer)
    with store.read() as con:
        base = model_lineage(con, parent)[-1]["id"]
    sampling = {"num_inference_steps": config.eval_steps, "guidance_scale": DEFAULT_GUIDANCE}

    def scores(pipe: SDPipeline) -> list[float]:
        drawn = score_pipeline(pipe, scorer, prompts, config.eval_seeds, progress=progress, **sampling)
        return [s for _, _, s in drawn]

    candidate = scores(
        load_pipeline(results["checkpoint"]["path"], device=default_device(), dtype=torch.float32)
    )
    parent_scores = scores(load_model(store, parent))
    base_scores = parent_scores if base == parent else scores(load_model(store, base))
    human = held_out_human_accuracy(
        store,
        results["checkpoint"]["path"],
        checkpoint_folder(store, parent),
        config,
        results["generation"]["seed"],
    )
    return {
        "human": human,
        "prompts": len(prompts),
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "seeds": list(config.eval_seeds),
        "scorer": config.eval_scorer,
        **sampling,
        "base_model_id": base,
        "candidate_mean": fmean(candidate),
        "parent_mean": fmean(parent_scores),
        "base_mean": fmean(base_scores),
        "vs_parent": win_rate(candidate, parent_scores).summary(),
        "vs_base": win_rate(candidate, base_scores).summary(),
    }


def held_out_human_accuracy(
    store: Store, candidate: str, reference: str, config: RoundConfig, seed: int, repeats: int = 4
) -> dict[str, Any]:
    """How often the candidate's implicit DPO preference agrees with people on held-out pairs.

    The pairs are final pairs on held-out prompts whose human majority vote picked a side (at
    most ``config.human_eval_pairs``, lowest ids first). For each, at ``repeats`` seeded
    (timestep, noise) draws shared by both images, the candidate prefers the image whose
    denoising error it lowered more relative to the reference (the sign of the Diffusion-DPO
    margin); accuracy is the share of draws where that is the people's winner (0.5: no signal).
    """
    if not config.human_eval_pairs:
        return {"pairs": 0}
    import torch
    from accelerate import Accelerator
    from diffusers import UNet2DConditionModel

    from training.data import PreferencePair
    from training.dpo import Features, load_parts, make_batch, pair_losses
    from workbench.pipelines import default_device

    held_out = set(held_out_prompts(config))
    votes = majority_consensus(
        judgments_frame(store, DatasetFilters(kinds=("final",), annotator_kinds=("human",)))
    )
    decided = votes.filter(pl.col("consensus") != "tie")
    with store.read() as con:
        rows = con.execute(
            "SELECT p.id, pr.text, ia.path, ib.path FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id "
            "JOIN images ia ON ia.id = p.image_a JOIN images ib ON ib.id = p.image_b "
            "WHERE list_contains(?, p.id) ORDER BY p.id",
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
    cfg = DPOConfig(
        pretrained_model=candidate, dataset=Path("."), output_dir=Path("."), mode="full", random_flip=False,
        empty_prompt_dropout=0.0, resolution=_native_resolution(candidate), seed=seed, batch_size=8,
    )  # fmt: skip
    accelerator, device = Accelerator(), default_device()
    parts = load_parts(candidate)
    for module in (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2):
        if module is not None:
            module.to(device, torch.float32).eval()
    ref_unet = (
        UNet2DConditionModel.from_pretrained(reference, subfolder="unet").to(device, torch.float32).eval()
    )
    features, agree, total = Features(parts, cfg.resolution, device), 0.0, 0
    with torch.no_grad():
        for start in range(0, repeats * len(pairs), cfg.batch_size):
            positions = range(start, min(start + cfg.batch_size, repeats * len(pairs)))
            batch = make_batch(pairs, features, parts.noise_scheduler, cfg, positions)
            _, metrics = pair_losses(
                batch, parts.unet, parts.unet, ref_unet, parts.noise_scheduler, cfg, accelerator
            )
            agree += float(metrics["implicit_accuracy"]) * len(positions)
            total += len(positions)
    return {"pairs": len(pairs), "draws": total, "accuracy": agree / total}


def _register(store, round_id, parent, config, results, progress) -> dict:
    evaluation = results["evaluation"]
    scorer_id = None
    if "spm_final" in results["training"]:
        # The round's step-aware model, a scorer whose parent is the CLIP it started from.
        spm_config = SPMConfig(**results["training"]["spm_config"])
        scorer_id = register_run(store, "spm", spm_config, Path(results["training"]["spm_final"]), round_id=round_id)
    with store.write() as con:
        model_id = register_model(
            con,
            f"round-{round_id}",
            results["checkpoint"]["path"],
            kind="full",
            parent_id=parent,
            round_id=round_id,
            dataset_version=results["dataset"]["id"],
            metadata={
                "recipe": config.recipe,
                "run_dir": results["training"]["run_dir"],
                "trained_as": "lora" if results["training"]["lora"] else "full",
                "lora": results["checkpoint"].get("lora"),
                "dataset_hash": results["dataset"]["content_hash"],
                "step_scorer_id": scorer_id,
            },
        )
        con.execute("UPDATE rounds SET model_id = ? WHERE id = ?", [model_id, round_id])
        con.executemany(
            "INSERT INTO metrics (round_id, model_id, name, value) VALUES (?, ?, ?, ?)",
            [
                [round_id, model_id, "win_rate_vs_parent", evaluation["vs_parent"]["win_rate"]],
                [round_id, model_id, "win_rate_vs_base", evaluation["vs_base"]["win_rate"]],
                [round_id, model_id, "eval_mean_score", evaluation["candidate_mean"]],
            ],
        )
    return {"model_id": model_id, "name": f"round-{round_id}", "scorer_id": scorer_id}


_STAGE_FUNCTIONS = {
    "generation": _generation,
    "judgments": _judgments,
    "dataset": _dataset,
    "training": _training,
    "checkpoint": _checkpoint,
    "evaluation": _evaluation,
    "register": _register,
}


DEMO_DPO: dict[str, Any] = {**DPO_DEFAULTS}
"""DPO settings of `workbench demo` (LoRA on the toy model)."""

DEMO = RoundConfig(num_prompts=96, per_prompt=4, eval_prompts=64, eval_seeds=(0, 1))
"""The settings of `workbench demo` other than training: oracle feedback on the shapes world."""


def demo_config(
    *,
    prompts: int = DEMO.num_prompts,
    train_steps: int = DEMO_DPO["max_steps"],
    eval_prompts: int = DEMO.eval_prompts,
    eval_seeds: int = len(DEMO.eval_seeds),
    steps: int = DEMO.num_inference_steps,
    seed: int = DEMO.seed,
) -> RoundConfig:
    """The demo's round config with the given sizes (smaller ones make a quick smoke run)."""
    training = {**DEMO_DPO, "max_steps": train_steps}
    return RoundConfig(
        **{
            **DEMO.to_dict(),
            "num_prompts": prompts,
            "seed": seed,
            "num_inference_steps": steps,
            "eval_steps": steps,
            "eval_prompts": eval_prompts,
            "eval_seeds": tuple(range(eval_seeds)),
            "training": tuple(f"{k}={json.dumps(v)}" for k, v in training.items()),
        }
    )


def training_metrics(summary: RoundSummary) -> pl.DataFrame:
    """The round's per-step training metrics (``metrics.jsonl`` of its run), empty before training."""
    path = summary.results.get("training", {}).get("metrics_file")
    if not path or not Path(path).is_file():
        return pl.DataFrame()
    return pl.DataFrame([json.loads(line) for line in Path(path).read_text().splitlines() if line])


def grid_images(
    store: Store, model_ids: list[int], prompts: list[str], seed: int = 0, steps: int = 20
) -> dict[int, list[Path]]:
    """One image per model and prompt from the same seed, for a before/after comparison.

    Images are drawn on first use and kept as ``<home>/rounds/grid/<model id>/<key>.png`` (the
    key hashes prompt, seed, steps and guidance), so a page shows them again without sampling.

    Returns:
        Per model id, the image files in prompt order.
    """
    from workbench.evaluation import sample_images

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
                target = files[prompts.index(prompt)]
                image.save(target.with_suffix(".tmp.png"))
                target.with_suffix(".tmp.png").replace(target)
        grid[model_id] = files
    return grid


def launch_round(
    store: Store, config: RoundConfig, parent_model_id: int | None = None, rounds: int = 1
) -> Job:
    """Runs `workbench round run` with this config as a background job (see `workbench.jobs`)."""
    run_dir = store.runs_dir / datetime.now().strftime("round-job-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "round_config.json"
    config_file.write_text(json.dumps(config.to_dict(), indent=2))
    command = [str(Path(sys.executable).with_name("workbench")), "--home", str(store.home), "round", "run"]
    command += ["--config", str(config_file), "--threads", "1"]
    if parent_model_id is not None:
        command += ["--parent", str(parent_model_id)]
    if rounds > 1:
        command += ["--auto", "--rounds", str(rounds)]
    key = hashlib.sha256(
        json.dumps([config.to_dict(), parent_model_id, rounds], sort_keys=True).encode()
    ).hexdigest()
    return launch_job(store, "round", command, run_dir, config=config.to_dict(), key=key)


def continue_round(store: Store, round_id: int) -> Job:
    """Runs `workbench round resume` of a round that waited for people, as a background job.

    Raises:
        RoundError: no such round, or it still needs human judgments.
    """
    needs = human_needs(store, round_id)
    if needs.missing:
        raise RoundError(f"round {round_id} still needs {needs.missing} human judgments on {needs.pairs} pairs")
    run_dir = store.runs_dir / f"round-{round_id}-resume"
    command = [str(Path(sys.executable).with_name("workbench")), "--home", str(store.home), "round", "resume"]
    command.append(str(round_id))
    return launch_job(store, "round", command, run_dir, round_id=round_id)
