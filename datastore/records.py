"""Reading and writing the store's entities. Each function takes an open connection, so a caller
composes several of them into one transaction with ``with store.write() as con: ...``."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa

from datastore.errors import NotFoundError, StoreError
from datastore.media import StoredImage
from datastore.sql import first_row, scalar

Outcome = Literal["a", "b", "tie", "both_bad"]
OUTCOMES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
SOURCES: tuple[str, ...] = ("app", "labelstudio", "ai", "import")
AnnotatorKind = Literal["human", "ai"]
ANNOTATOR_KINDS: dict[str, tuple[AnnotatorKind, ...]] = {"both": ("human", "ai"), "human": ("human",), "ai": ("ai",)}
"""Whose judgments count, by the name the CLI, the pages and rounds give the choice: the annotator
kinds it takes. ``both`` holds every kind."""
PAIR_KINDS: tuple[str, ...] = ("final", "step")


def upsert_prompts(
    con: duckdb.DuckDBPyConnection, texts: Sequence[str], *, split: str = "train", source: str | None = None
) -> dict[str, int]:
    """Insert the prompts that are new; return the id of every given prompt text."""
    if any(not t or not t.strip() for t in texts):
        raise StoreError("a prompt is empty")
    unique = list(dict.fromkeys(texts))
    incoming = pa.table({"text": unique})
    con.register("incoming_prompts", incoming)
    try:
        con.execute(
            "INSERT INTO prompts (text, split, source) SELECT text, ?, ? FROM incoming_prompts "
            "WHERE text NOT IN (SELECT text FROM prompts)",
            [split, source],
        )
        rows = con.execute(
            "SELECT p.text, p.id FROM prompts p JOIN incoming_prompts i ON p.text = i.text"
        ).fetchall()
    finally:
        con.unregister("incoming_prompts")
    return dict(rows)


def ensure_annotator(
    con: duckdb.DuckDBPyConnection,
    name: str,
    *,
    kind: AnnotatorKind = "human",
    model: str | None = None,
    version: str | None = None,
) -> int:
    """The id of the annotator called ``name``, created if new."""
    if kind not in ANNOTATOR_KINDS["both"]:
        raise StoreError(f"annotator kind must be 'human' or 'ai', got {kind!r}")
    row = first_row(con, "SELECT id FROM annotators WHERE name = ?", [name])
    if row:
        return row[0]
    return scalar(
        con,
        "INSERT INTO annotators (name, kind, model, version) VALUES (?, ?, ?, ?) RETURNING id",
        [name, kind, model, version],
    )


def register_model(
    con: duckdb.DuckDBPyConnection,
    name: str,
    path: str,
    *,
    kind: Literal["base", "lora", "full", "scorer"] = "base",
    parent_id: int | None = None,
    round_id: int | None = None,
    job_id: int | None = None,
    dataset_version: str | None = None,
    metadata: dict | None = None,
) -> int:
    """Register a model or checkpoint (idempotent by name); return its id."""
    row = first_row(con, "SELECT id FROM models WHERE name = ?", [name])
    if row:
        return row[0]
    return scalar(
        con,
        "INSERT INTO models (name, path, kind, parent_id, round_id, job_id, dataset_version, metadata) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [name, path, kind, parent_id, round_id, job_id, dataset_version, json.dumps(metadata or {})],
    )


def model_lineage(con: duckdb.DuckDBPyConnection, model_id: int) -> list[dict]:
    """The model and its ancestors, newest first."""
    chain = []
    current: int | None = model_id
    while current is not None:
        row = first_row(con, "SELECT id, name, path, kind, parent_id FROM models WHERE id = ?", [current])
        if row is None:
            raise NotFoundError(f"model {current} does not exist")
        chain.append(dict(zip(("id", "name", "path", "kind", "parent_id"), row, strict=True)))
        current = row[4]
    return chain


@dataclass(frozen=True)
class ImageRow:
    """An image file plus where it came from."""

    image: StoredImage
    generation_id: int | None = None
    pool_id: int | None = None
    step_index: int | None = None
    timestep: int | None = None
    source_uid: str | None = None
    source_model: str | None = None


def insert_images(con: duckdb.DuckDBPyConnection, rows: Sequence[ImageRow]) -> None:
    """Record image files; an image already recorded (same content hash) is left as it is."""
    if not rows:
        return
    table = pa.table(
        {
            "id": [r.image.id for r in rows],
            "path": [r.image.path for r in rows],
            "width": [r.image.width for r in rows],
            "height": [r.image.height for r in rows],
            "format": [r.image.format for r in rows],
            "nbytes": [r.image.nbytes for r in rows],
            "generation_id": pa.array([r.generation_id for r in rows], pa.int64()),
            "pool_id": pa.array([r.pool_id for r in rows], pa.int64()),
            "step_index": pa.array([r.step_index for r in rows], pa.int32()),
            "timestep": pa.array([r.timestep for r in rows], pa.int32()),
            "source_uid": pa.array([r.source_uid for r in rows], pa.string()),
            "source_model": pa.array([r.source_model for r in rows], pa.string()),
        }
    )
    con.register("incoming_images", table)
    try:
        con.execute(
            "INSERT INTO images (id, path, width, height, format, nbytes, generation_id, pool_id, step_index, "
            "timestep, source_uid, source_model) SELECT DISTINCT ON (id) * FROM incoming_images "
            "WHERE id NOT IN (SELECT id FROM images)"
        )
    finally:
        con.unregister("incoming_images")


@dataclass(frozen=True)
class NewPair:
    """A pair of images of one prompt to be judged."""

    prompt_id: int
    image_a: str
    image_b: str
    kind: Literal["final", "step"] = "final"
    timestep: int | None = None
    pool_id: int | None = None
    round_id: int | None = None
    gold_outcome: Outcome | None = None
    source_ref: str | None = None


def insert_pairs(con: duckdb.DuckDBPyConnection, pairs: Sequence[NewPair]) -> list[int]:
    """Record pairs; a pair of the same two images (same order) is reused. Returns ids in input order."""
    for p in pairs:
        if p.kind not in PAIR_KINDS:
            raise StoreError(f"pair kind must be one of {PAIR_KINDS}, got {p.kind!r}")
        if p.image_a == p.image_b:
            raise StoreError(f"a pair needs two different images, got {p.image_a} twice")
        if p.gold_outcome is not None and p.gold_outcome not in OUTCOMES:
            raise StoreError(f"gold outcome must be one of {OUTCOMES}, got {p.gold_outcome!r}")
    if not pairs:
        return []
    table = pa.Table.from_pylist([asdict(p) for p in pairs], schema=_NEW_PAIR_SCHEMA)
    table = table.append_column("ord", pa.array(range(len(pairs)), pa.int64()))
    con.register("incoming_pairs", table)
    try:
        con.execute(
            "INSERT INTO pairs (prompt_id, image_a, image_b, kind, timestep, pool_id, round_id, gold_outcome, source_ref) "
            "SELECT prompt_id, image_a, image_b, kind, timestep, pool_id, round_id, gold_outcome, source_ref "
            "FROM (SELECT DISTINCT ON (image_a, image_b) * FROM incoming_pairs ORDER BY ord) i "
            "WHERE NOT EXISTS (SELECT 1 FROM pairs p WHERE p.image_a = i.image_a AND p.image_b = i.image_b) "
            "ORDER BY ord"
        )
        ids = con.execute(
            "SELECT p.id FROM incoming_pairs i JOIN pairs p ON p.image_a = i.image_a AND p.image_b = i.image_b "
            "ORDER BY i.ord"
        ).fetchall()
    finally:
        con.unregister("incoming_pairs")
    return [r[0] for r in ids]


_NEW_PAIR_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.int64()),
        ("image_a", pa.string()),
        ("image_b", pa.string()),
        ("kind", pa.string()),
        ("timestep", pa.int32()),
        ("pool_id", pa.int64()),
        ("round_id", pa.int64()),
        ("gold_outcome", pa.string()),
        ("source_ref", pa.string()),
    ]
)


@dataclass(frozen=True)
class NewJudgment:
    """One judgment of a pair.

    Attributes:
        outcome: ``a`` / ``b`` (that image is preferred), ``tie``, or ``both_bad``.
        left_image: which image was shown on the left (``a`` or ``b``), when known.
        shown_at, answered_at: when the pair appeared and was answered (time taken = difference).
        external_id: the id at the source (e.g. a Label Studio annotation id); with ``source``
            it identifies the judgment for idempotent merges.
        idempotency_key: made by the client for one answer (a key press in the browser); the
            inbox accepts a key once and ignores a resend of it.
        preview: what a step judgment was made on: None = the pair's own images (predicted x0),
            ``completion`` = their completion previews (the finished images they lead to).
    """

    pair_id: int
    annotator_id: int
    source: Literal["app", "labelstudio", "ai", "import"]
    outcome: Outcome
    left_image: Literal["a", "b"] | None = None
    confidence: float | None = None
    score_a: float | None = None
    score_b: float | None = None
    shown_at: datetime | None = None
    answered_at: datetime | None = None
    is_gold: bool = False
    external_id: str | None = None
    external_updated_at: str | None = None
    idempotency_key: str | None = None
    preview: Literal["completion"] | None = None


PREVIEW_KINDS: tuple[str, ...] = ("completion",)
"""Kinds of preview a judgment may have been made on (``NewJudgment.preview``, ``image_previews.kind``)."""

_JUDGMENT_SCHEMA = pa.schema(
    [
        ("pair_id", pa.int64()),
        ("annotator_id", pa.int64()),
        ("source", pa.string()),
        ("outcome", pa.string()),
        ("left_image", pa.string()),
        ("confidence", pa.float64()),
        ("score_a", pa.float64()),
        ("score_b", pa.float64()),
        ("shown_at", pa.timestamp("us")),
        ("answered_at", pa.timestamp("us")),
        ("is_gold", pa.bool_()),
        ("external_id", pa.string()),
        ("external_updated_at", pa.string()),
        ("idempotency_key", pa.string()),
        ("preview", pa.string()),
    ]
)


MAX_ID = 2**63 - 1
MAX_TEXT_CHARS = 1000
"""Longest external id or external timestamp a judgment may carry."""


def validate_judgment(j: NewJudgment) -> None:
    """Raise StoreError naming the field when a judgment is malformed: a wrong type, a value out
    of range, or text that is not UTF-8. A judgment that passes is stored exactly as given."""
    for name in ("pair_id", "annotator_id"):
        value = getattr(j, name)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool | np.bool_) or not 0 < value <= MAX_ID:
            raise StoreError(f"judgment {name} must be a positive integer id, got {value!r}")
    if not isinstance(j.outcome, str) or j.outcome not in OUTCOMES:
        raise StoreError(f"judgment outcome must be one of {OUTCOMES}, got {j.outcome!r}")
    if not isinstance(j.source, str) or j.source not in SOURCES:
        raise StoreError(f"judgment source must be one of {SOURCES}, got {j.source!r}")
    if j.left_image is not None and (not isinstance(j.left_image, str) or j.left_image not in ("a", "b")):
        raise StoreError(f"left_image must be 'a', 'b' or None, got {j.left_image!r}")
    if j.preview is not None and (not isinstance(j.preview, str) or j.preview not in PREVIEW_KINDS):
        raise StoreError(f"judgment preview must be one of {PREVIEW_KINDS} or None, got {j.preview!r}")
    for name in ("confidence", "score_a", "score_b"):
        value = getattr(j, name)
        if value is None:
            continue
        if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_) or not math.isfinite(value):
            raise StoreError(f"judgment {name} must be a finite number or None, got {value!r}")
    if j.confidence is not None and not 0.0 <= j.confidence <= 1.0:
        raise StoreError(f"confidence must be within [0, 1], got {j.confidence}")
    for name in ("shown_at", "answered_at"):
        value = getattr(j, name)
        if value is not None and not isinstance(value, datetime):
            raise StoreError(f"judgment {name} must be a datetime or None, got {value!r}")
    if not isinstance(j.is_gold, bool | np.bool_):
        raise StoreError(f"judgment is_gold must be True or False, got {j.is_gold!r}")
    for name in ("external_id", "external_updated_at", "idempotency_key"):
        value = getattr(j, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise StoreError(f"judgment {name} must be text or None, got {value!r}")
        if len(value) > MAX_TEXT_CHARS:
            raise StoreError(f"judgment {name} has {len(value)} characters, more than {MAX_TEXT_CHARS}")
        try:
            value.encode()
        except UnicodeEncodeError as e:
            raise StoreError(f"judgment {name} is not valid Unicode text: {e}") from None


def judgment_row(j: NewJudgment) -> dict:
    """The fields of a valid judgment as plain Python values (numpy scalars become int, float, bool)."""
    row = asdict(j)
    for name in ("pair_id", "annotator_id"):
        row[name] = int(row[name])
    for name in ("confidence", "score_a", "score_b"):
        row[name] = None if row[name] is None else float(row[name])
    row["is_gold"] = bool(row["is_gold"])
    return row


def insert_judgments(con: duckdb.DuckDBPyConnection, judgments: Sequence[NewJudgment]) -> list[int]:
    """Record judgments (all validated before any is written). Returns their ids in input order."""
    for j in judgments:
        validate_judgment(j)
    if not judgments:
        return []
    table = pa.Table.from_pylist([judgment_row(j) for j in judgments], schema=_JUDGMENT_SCHEMA)
    con.register("incoming_judgments", table)
    try:
        ids = con.execute(
            "INSERT INTO judgments (pair_id, annotator_id, source, outcome, left_image, confidence, score_a, score_b, "
            "shown_at, answered_at, is_gold, external_id, external_updated_at, idempotency_key, preview) "
            "SELECT * FROM incoming_judgments RETURNING id"
        ).fetchall()
    finally:
        con.unregister("incoming_judgments")
    return [r[0] for r in ids]


def store_stats(con: duckdb.DuckDBPyConnection) -> dict[str, int | dict[str, int]]:
    """Counts of the store's main entities, judgments by source and outcome, and the inbox rows
    that were quarantined because they could not be applied (``inbox_quarantine``)."""
    counts = {
        table: scalar(con, f"SELECT count(*) FROM {table}")
        for table in ("prompts", "models", "images", "pairs", "annotators", "dataset_versions", "jobs", "rounds")
    }
    counts["judgments"] = scalar(con, "SELECT count(*) FROM judgments WHERE NOT withdrawn")
    counts["quarantined_judgments"] = scalar(con, "SELECT count(*) FROM inbox_quarantine")
    counts["pairs_by_kind"] = dict(con.execute("SELECT kind, count(*) FROM pairs GROUP BY kind ORDER BY kind").fetchall())
    counts["judgments_by_source"] = dict(
        con.execute(
            "SELECT source, count(*) FROM judgments WHERE NOT withdrawn GROUP BY source ORDER BY source"
        ).fetchall()
    )
    counts["judgments_by_outcome"] = dict(
        con.execute(
            "SELECT outcome, count(*) FROM judgments WHERE NOT withdrawn GROUP BY outcome ORDER BY outcome"
        ).fetchall()
    )
    return counts


def insert_generation(
    con: duckdb.DuckDBPyConnection,
    *,
    prompt_id: int,
    seed: int,
    sampler: str,
    steps: int,
    guidance: float,
    model_id: int | None = None,
    width: int | None = None,
    height: int | None = None,
    params: dict | None = None,
) -> int:
    """Record one sampling run (one image, or one denoising chain of step pools); return its id."""
    if steps < 1:
        raise StoreError(f"a generation needs at least one step, got {steps}")
    return scalar(
        con,
        "INSERT INTO generations (model_id, prompt_id, seed, sampler, steps, guidance, width, height, params) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [model_id, prompt_id, seed, sampler, steps, guidance, width, height, json.dumps(params or {})],
    )


def insert_step_pool(
    con: duckdb.DuckDBPyConnection,
    *,
    prompt_id: int,
    step_index: int,
    num_steps: int,
    timestep: int,
    k: int,
    generation_id: int | None = None,
    continued_image: str | None = None,
) -> int:
    """Record a pool of k candidates for one state of a denoising chain; return its id."""
    if k < 2:
        raise StoreError(f"a step pool needs at least 2 candidates, got {k}")
    if not 0 <= step_index <= num_steps:
        raise StoreError(f"step index {step_index} is outside the chain of {num_steps} steps")
    return scalar(
        con,
        "INSERT INTO step_pools (generation_id, prompt_id, step_index, num_steps, timestep, k, continued_image) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        [generation_id, prompt_id, step_index, num_steps, timestep, k, continued_image],
    )


def insert_previews(con: duckdb.DuckDBPyConnection, kind: str, previews: Sequence[tuple[str, str]]) -> None:
    """Record (candidate image id, preview image id) links of one preview kind; a link already there is kept.

    Both images must already be recorded (`insert_images`).
    """
    if kind != "completion":
        raise StoreError(f"unknown preview kind {kind!r}; expected completion")
    if previews:
        con.executemany(
            "INSERT INTO image_previews (image_id, kind, preview_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [[image, kind, preview] for image, preview in previews],
        )
