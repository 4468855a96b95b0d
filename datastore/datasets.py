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
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from datastore.errors import NotFoundError, StoreError
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
)
_HASHED_COLUMNS = [c for c in SNAPSHOT_COLUMNS if c not in ("image_0", "image_1")]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class DatasetFilters:
    """Which pairs and judgments a dataset version takes.

    Attributes:
        kinds: pair kinds to include: ``final``, ``step`` or both.
        sources: judgment sources to count (``app``, ``labelstudio``, ``ai``, ``import``); empty = all.
        min_judgments: pairs with fewer (non-withdrawn) judgments are left out.
        min_agreement: pairs whose share of judgments agreeing with the consensus is lower are left out.
        include_ties: keep pairs whose consensus is a tie (labels 0.5 / 0.5).
        include_gold: keep gold pairs (known answer) as well.
    """

    kinds: tuple[str, ...] = ("final", "step")
    sources: tuple[str, ...] = ()
    min_judgments: int = 1
    min_agreement: float = 0.0
    include_ties: bool = True
    include_gold: bool = True

    def __post_init__(self) -> None:
        if not self.kinds or any(k not in ("final", "step") for k in self.kinds):
            raise StoreError(f"kinds must be a non-empty subset of ('final', 'step'), got {self.kinds}")
        if self.min_judgments < 1:
            raise StoreError(f"min_judgments must be >= 1, got {self.min_judgments}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise StoreError(f"min_agreement must be within [0, 1], got {self.min_agreement}")


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

    @property
    def pairs_file(self) -> Path:
        return self.path / "pairs.parquet"


def consensus_frame(store: Store, filters: DatasetFilters) -> pl.DataFrame:
    """One row per selected pair with its majority-vote consensus label, sorted by pair id.

    The consensus is the most frequent of a / b / tie among the pair's judgments; an a-b draw is
    a tie. ``both_bad`` judgments count towards ``n_judgments`` and never agree with a consensus.
    Pairs whose judgments are mostly ``both_bad`` are left out.
    """
    source_clause = ""
    params: list = []
    if filters.sources:
        source_clause = f"AND j.source IN ({', '.join('?' for _ in filters.sources)})"
        params.extend(filters.sources)
    kinds_clause = f"p.kind IN ({', '.join('?' for _ in filters.kinds)})"
    params.extend(filters.kinds)
    gold_clause = "" if filters.include_gold else "AND p.gold_outcome IS NULL"
    query = f"""
        WITH votes AS (
            SELECT j.pair_id,
                   count(*) FILTER (WHERE outcome = 'a') AS n_a,
                   count(*) FILTER (WHERE outcome = 'b') AS n_b,
                   count(*) FILTER (WHERE outcome = 'tie') AS n_tie,
                   count(*) FILTER (WHERE outcome = 'both_bad') AS n_bad,
                   count(*) AS n
            FROM judgments j
            WHERE NOT j.withdrawn {source_clause}
            GROUP BY j.pair_id
        ), labelled AS (
            SELECT v.*,
                   CASE WHEN n_a > n_b AND n_a >= n_tie THEN 'a'
                        WHEN n_b > n_a AND n_b >= n_tie THEN 'b'
                        ELSE 'tie' END AS consensus
            FROM votes v
            WHERE n_bad * 2 <= n
        )
        SELECT p.id AS pair_id, pr.text AS prompt,
               ia.path AS media_0, ib.path AS media_1,
               p.image_a AS image_0_uid, p.image_b AS image_1_uid,
               (CASE consensus WHEN 'a' THEN 1.0 WHEN 'b' THEN 0.0 ELSE 0.5 END)::DOUBLE AS label_0,
               (CASE consensus WHEN 'a' THEN 0.0 WHEN 'b' THEN 1.0 ELSE 0.5 END)::DOUBLE AS label_1,
               p.kind, p.timestep::BIGINT AS timestep, l.n AS n_judgments,
               (CASE consensus WHEN 'a' THEN n_a WHEN 'b' THEN n_b ELSE n_tie END) / l.n::DOUBLE AS agreement,
               coalesce(ma.name, ia.source_model) AS model_0,
               coalesce(mb.name, ib.source_model) AS model_1
        FROM labelled l
        JOIN pairs p ON p.id = l.pair_id
        JOIN prompts pr ON pr.id = p.prompt_id
        JOIN images ia ON ia.id = p.image_a
        JOIN images ib ON ib.id = p.image_b
        LEFT JOIN generations ga ON ga.id = ia.generation_id
        LEFT JOIN models ma ON ma.id = ga.model_id
        LEFT JOIN generations gb ON gb.id = ib.generation_id
        LEFT JOIN models mb ON mb.id = gb.model_id
        WHERE {kinds_clause} {gold_clause}
        ORDER BY p.id
    """
    with store.read() as con:
        frame = con.sql(query, params=params).pl()
    frame = frame.filter(
        (pl.col("n_judgments") >= filters.min_judgments) & (pl.col("agreement") >= filters.min_agreement)
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


def create_dataset_version(store: Store, name: str, filters: DatasetFilters | None = None) -> DatasetVersion:
    """Snapshot the pairs selected by ``filters`` as a new immutable dataset version.

    Building the same selection from the same judgments gives the same content hash and the
    same version id (``<name>-<hash prefix>``); the existing version is then returned as it is.

    Raises:
        StoreError: the name is not a plain identifier, or no pair matches the filters.
    """
    filters = filters or DatasetFilters()
    if not _NAME_RE.match(name):
        raise StoreError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    frame = consensus_frame(store, filters)
    if frame.is_empty():
        raise StoreError(f"no judged pair matches the filters {asdict(filters)}")
    digest = content_hash(frame)
    version_id = f"{name}-{digest[:12]}"
    final_dir = store.datasets_dir / version_id
    if not final_dir.exists():
        _write_snapshot(store, frame, final_dir, version_id, name, digest, filters)
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
) -> None:
    """Write the snapshot into a temporary folder, then rename it into place (all or nothing)."""
    tmp_dir = Path(tempfile.mkdtemp(dir=store.datasets_dir, prefix=f".tmp-{version_id}-"))
    try:
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
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "format": "docs/dataset-snapshot.md",
        }
        (tmp_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        os.rename(tmp_dir, final_dir)
    except OSError as e:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise StoreError(f"could not write dataset version {version_id}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


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
