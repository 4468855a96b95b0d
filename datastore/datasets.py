"""Dataset versions: immutable snapshots of chosen pairs with consensus labels.

A version is a folder ``datasets/<id>/`` holding ``pairs.parquet``, ``images/`` and
``manifest.json`` (format: docs/dataset-snapshot.md). Training reads only that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import polars as pl

from datastore.atomic import replace_folder
from datastore.consensus import majority_consensus
from datastore.errors import NotFoundError, StoreError
from datastore.records import ANNOTATOR_KINDS, SOURCES
from datastore.store import Store

SNAPSHOT_COLUMNS = (
    "pair_id",
    "prompt",
    "image_0",
    "image_1",
    "image_0_uid",
    "image_1_uid",
    "label_0",
    "label_1",
    "kind",
    "timestep",
    "n_judgments",
    "agreement",
    "model_0",
    "model_1",
    "preview",
)
_HASHED_COLUMNS = [c for c in SNAPSHOT_COLUMNS if c not in ("image_0", "image_1")]
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class DatasetFilters:
    """Which pairs and judgments a dataset version takes.

    Attributes:
        kinds: pair kinds to include: ``final``, ``step`` or both.
        sources: judgment sources to count (``app``, ``labelstudio``, ``ai``, ``import``); empty = all.
        annotator_kinds: annotator kinds to count: ``human``, ``ai`` or both.
        exclude_annotators: annotators (by name) whose judgments are not counted.
        min_ai_margin: AI judgments whose score margin ``|score_a - score_b|`` is below this are not
            counted (with a margin above 0, AI judgments without scores are not counted either).
        include_both_bad: count ``both_bad`` judgments (they count towards ``n_judgments`` and
            against agreement, and pairs judged mostly both-bad are left out); False drops them
            before the vote.
        min_judgments: pairs with fewer (non-withdrawn) judgments are left out.
        min_agreement: pairs whose share of judgments agreeing with the consensus is lower are left out.
        include_ties: keep pairs whose consensus is a tie (labels 0.5 / 0.5).
        include_gold: keep gold pairs (known answer) as well.
        step_judgments: which judgments of step pairs count: ``all``, or ``completion``, only those
            made on the candidates' completion previews, so that the step pairs kept are those
            judged on completions (each with ``preview`` = ``completion``). Final pairs are not affected.
    """

    kinds: tuple[str, ...] = ("final", "step")
    sources: tuple[str, ...] = ()
    annotator_kinds: tuple[str, ...] = ANNOTATOR_KINDS["both"]
    exclude_annotators: tuple[str, ...] = ()
    min_ai_margin: float = 0.0
    include_both_bad: bool = True
    min_judgments: int = 1
    min_agreement: float = 0.0
    include_ties: bool = True
    include_gold: bool = True
    step_judgments: Literal["all", "completion"] = "all"

    def __post_init__(self) -> None:
        if not self.kinds or any(k not in ("final", "step") for k in self.kinds):
            raise StoreError(f"kinds must be a non-empty subset of ('final', 'step'), got {self.kinds}")
        if any(s not in SOURCES for s in self.sources):
            raise StoreError(f"sources must be a subset of {SOURCES}, got {self.sources}")
        if not self.annotator_kinds or any(k not in ANNOTATOR_KINDS["both"] for k in self.annotator_kinds):
            raise StoreError(
                f"annotator_kinds must be a non-empty subset of {ANNOTATOR_KINDS['both']}, got {self.annotator_kinds}"
            )
        if self.min_ai_margin < 0.0:
            raise StoreError(f"min_ai_margin must be >= 0, got {self.min_ai_margin}")
        if self.min_judgments < 1:
            raise StoreError(f"min_judgments must be >= 1, got {self.min_judgments}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise StoreError(f"min_agreement must be within [0, 1], got {self.min_agreement}")
        if self.step_judgments not in ("all", "completion"):
            raise StoreError(f"step_judgments must be 'all' or 'completion', got {self.step_judgments!r}")


@dataclass(frozen=True)
class DatasetVersion:
    """A dataset version as recorded in its manifest."""

    id: str
    name: str
    content_hash: str
    path: Path
    n_pairs: int
    counts: dict = field(default_factory=dict)
    filters: dict = field(default_factory=dict)
    created_at: str = ""
    curation: dict | None = None

    @property
    def pairs_file(self) -> Path:
        return self.path / "pairs.parquet"


JUDGMENT_COLUMNS = (
    "judgment_id", "pair_id", "annotator", "annotator_kind", "source", "outcome", "left_image",
    "score_a", "score_b", "kind", "timestep", "gold_outcome", "image_a", "image_b", "preview",
)
"""Columns of :func:`judgments_frame`."""


def judgments_frame(store: Store, filters: DatasetFilters | None = None) -> pl.DataFrame:
    """The non-withdrawn judgments that ``filters`` count, one row each, sorted by judgment id.

    Applies the judgment-level filters (kinds, sources, annotator kinds and names, AI score margin,
    both-bad, gold pairs); the pair-level ones (judgments, agreement, ties) need a consensus first.
    Columns: :data:`JUDGMENT_COLUMNS`.
    """
    filters = filters or DatasetFilters()
    clauses = ["NOT j.withdrawn"]
    params: list = []

    def among(column: str, values: tuple) -> None:
        clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
        params.extend(values)

    among("p.kind", filters.kinds)
    among("a.kind", filters.annotator_kinds)
    if filters.sources:
        among("j.source", filters.sources)
    if filters.exclude_annotators:
        clauses.append(f"a.name NOT IN ({', '.join('?' for _ in filters.exclude_annotators)})")
        params.extend(filters.exclude_annotators)
    if filters.min_ai_margin > 0.0:
        clauses.append("(a.kind <> 'ai' OR coalesce(abs(j.score_a - j.score_b) >= ?, false))")
        params.append(filters.min_ai_margin)
    if not filters.include_both_bad:
        clauses.append("j.outcome <> 'both_bad'")
    if not filters.include_gold:
        clauses.append("p.gold_outcome IS NULL")
    if filters.step_judgments == "completion":
        clauses.append("(p.kind <> 'step' OR coalesce(j.preview = 'completion', false))")
    query = f"""
        SELECT j.id AS judgment_id, j.pair_id, a.name AS annotator, a.kind AS annotator_kind, j.source,
               j.outcome, j.left_image, j.score_a, j.score_b, p.kind, p.timestep::BIGINT AS timestep,
               p.gold_outcome, p.image_a, p.image_b, j.preview
        FROM judgments j
        JOIN annotators a ON a.id = j.annotator_id
        JOIN pairs p ON p.id = j.pair_id
        WHERE {" AND ".join(clauses)}
        ORDER BY j.id
    """
    with store.read() as con:
        return con.sql(query, params=params).pl()


def consensus_frame(store: Store, filters: DatasetFilters, consensus: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per selected pair with its consensus label, sorted by pair id.

    A step pair's ``preview`` is ``completion`` when every judgment that ``filters`` count was
    made on its candidates' completion previews, else null (null for final pairs).

    Args:
        filters: which judgments count and which pairs are kept.
        consensus: per-pair labels (columns pair_id, consensus, n_judgments, agreement, as
            :mod:`datastore.consensus` gives them); None computes the majority vote of the
            judgments that ``filters`` count. Pairs missing from it are left out.
    """
    judgments = judgments_frame(store, filters)
    if consensus is None:
        consensus = majority_consensus(judgments)
    previews = judgments.group_by("pair_id").agg(
        pl.when((pl.col("kind") == "step").all() & pl.col("preview").eq_missing("completion").all())
        .then(pl.lit("completion"))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("preview")
    )
    query = """
        SELECT p.id AS pair_id, p.prompt,
               p.path_a AS media_0, p.path_b AS media_1,
               p.image_a AS image_0_uid, p.image_b AS image_1_uid,
               p.kind, p.timestep::BIGINT AS timestep,
               coalesce(ma.name, p.source_model_a) AS model_0,
               coalesce(mb.name, p.source_model_b) AS model_1
        FROM pair_media p
        LEFT JOIN generations ga ON ga.id = p.generation_a
        LEFT JOIN models ma ON ma.id = ga.model_id
        LEFT JOIN generations gb ON gb.id = p.generation_b
        LEFT JOIN models mb ON mb.id = gb.model_id
        ORDER BY p.id
    """
    with store.read() as con:
        pairs = con.sql(query).pl()
    label_0 = pl.col("consensus").replace_strict({"a": 1.0, "b": 0.0, "tie": 0.5}, return_dtype=pl.Float64)
    frame = (
        pairs.join(consensus.select("pair_id", "consensus", "n_judgments", "agreement"), on="pair_id", how="inner")
        .join(previews, on="pair_id", how="left")
        .with_columns(label_0.alias("label_0"), (1.0 - label_0).alias("label_1"))
        .filter(
            (pl.col("n_judgments") >= filters.min_judgments) & (pl.col("agreement") >= filters.min_agreement)
        )
        .select(
            "pair_id", "prompt", "media_0", "media_1", "image_0_uid", "image_1_uid", "label_0", "label_1",
            "kind", "timestep", "n_judgments", "agreement", "model_0", "model_1", "preview",
        )
        .sort("pair_id")
    )
    if not filters.include_ties:
        frame = frame.filter(pl.col("label_0") != 0.5)
    return frame


def content_hash(frame: pl.DataFrame) -> str:
    """sha256 over the snapshot rows (sorted by pair id), independent of where images lie on disk."""
    canonical = frame.select(_HASHED_COLUMNS).sort("pair_id")
    digest = hashlib.sha256()
    for row in canonical.iter_rows():
        digest.update(json.dumps(row, separators=(",", ":"), default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def check_dataset_name(name: str) -> None:
    """Raise StoreError unless ``name`` is a plain identifier usable in a folder name."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise StoreError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)")


def create_dataset_version(
    store: Store,
    name: str,
    filters: DatasetFilters | None = None,
    *,
    consensus: pl.DataFrame | None = None,
    curation: dict | None = None,
) -> DatasetVersion:
    """Snapshot the pairs selected by ``filters`` as a new immutable dataset version.

    Building the same selection from the same judgments gives the same content hash and the
    same version id (``<name>-<hash prefix>``); the existing version is then returned as it is.

    Args:
        consensus: per-pair labels from another aggregate (see :func:`consensus_frame`);
            None takes the majority vote.
        curation: recorded in the manifest (e.g. the curation's name, method and filters).

    Raises:
        StoreError: the name is not a plain identifier, or no pair matches the filters.
    """
    filters = filters or DatasetFilters()
    check_dataset_name(name)
    frame = consensus_frame(store, filters, consensus)
    if frame.is_empty():
        raise StoreError(f"no judged pair matches the filters {asdict(filters)}")
    digest = content_hash(frame)
    version_id = f"{name}-{digest[:12]}"
    final_dir = store.datasets_dir / version_id
    if not final_dir.exists():
        _write_snapshot(store, frame, final_dir, version_id, name, digest, filters, curation)
    version = load_dataset_version(final_dir)
    with store.write() as con:
        con.execute(
            "INSERT INTO dataset_versions (id, name, content_hash, path, n_pairs, filters) "
            "SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM dataset_versions WHERE id = ?)",
            [version_id, name, digest, str(final_dir.relative_to(store.home)), version.n_pairs,
             json.dumps(version.filters), version_id],
        )
    return version


def _write_snapshot(
    store: Store,
    frame: pl.DataFrame,
    final_dir: Path,
    version_id: str,
    name: str,
    digest: str,
    filters: DatasetFilters,
    curation: dict | None,
) -> None:
    """Write the snapshot into a temporary folder, then rename it into place (all or nothing)."""

    def write(tmp_dir: Path) -> None:
        images_dir = tmp_dir / "images"
        images_dir.mkdir()
        for rel in set(frame["media_0"].to_list()) | set(frame["media_1"].to_list()):
            _link_or_copy(store.media.resolve(rel), images_dir / Path(rel).name)
        snapshot = frame.with_columns(
            ("images/" + pl.col("media_0").str.split("/").list.last()).alias("image_0"),
            ("images/" + pl.col("media_1").str.split("/").list.last()).alias("image_1"),
        ).select(SNAPSHOT_COLUMNS)
        snapshot.write_parquet(tmp_dir / "pairs.parquet")
        manifest = {
            "id": version_id,
            "name": name,
            "content_hash": digest,
            "n_pairs": snapshot.height,
            "counts": {
                "pairs": snapshot.height,
                "final": int((snapshot["kind"] == "final").sum()),
                "step": int((snapshot["kind"] == "step").sum()),
                "ties": int((snapshot["label_0"] == 0.5).sum()),
                "judgments": int(snapshot["n_judgments"].sum()),
                "images": len(list(images_dir.iterdir())),
            },
            "filters": asdict(filters),
            **({"curation": curation} if curation is not None else {}),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "format": "docs/dataset-snapshot.md",
        }
        (tmp_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))

    try:
        replace_folder(write, final_dir)
    except OSError as e:
        raise StoreError(f"could not write dataset version {version_id}: {e}") from e


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def load_dataset_version(path: Path) -> DatasetVersion:
    """Read a dataset version's manifest from its folder."""
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise NotFoundError(f"{path} is not a dataset version (no manifest.json)")
    m = json.loads(manifest_file.read_text())
    return DatasetVersion(
        id=m["id"],
        name=m["name"],
        content_hash=m["content_hash"],
        path=path,
        n_pairs=m["n_pairs"],
        counts=m["counts"],
        filters=m["filters"],
        created_at=m["created_at"],
        curation=m.get("curation"),
    )


def find_dataset_version(store: Store, version: str) -> DatasetVersion:
    """A dataset version by id, by a unique id prefix, or by name (the newest of that name)."""
    with store.read() as con:
        rows = con.execute(
            "SELECT id FROM dataset_versions WHERE id = ? OR id LIKE ? || '%' OR name = ? ORDER BY created_at DESC",
            [version, version, version],
        ).fetchall()
    exact = [r[0] for r in rows if r[0] == version]
    ids = exact or [r[0] for r in rows]
    if not ids:
        raise NotFoundError(f"no dataset version {version!r}; `workbench dataset list` shows them")
    by_name_or_prefix = {i for i in ids}
    if not exact and len(by_name_or_prefix) > 1 and not all(i.startswith(f"{version}-") for i in ids):
        raise StoreError(f"{version!r} matches several dataset versions: {sorted(by_name_or_prefix)}")
    return load_dataset_version(store.datasets_dir / ids[0])


def list_dataset_versions(store: Store) -> pl.DataFrame:
    """All dataset versions, newest first."""
    with store.read() as con:
        return con.sql(
            "SELECT id, name, n_pairs, content_hash, created_at FROM dataset_versions ORDER BY created_at DESC"
        ).pl()
