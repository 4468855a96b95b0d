"""Curations: a named consensus method plus filters, saved in the store and built into dataset versions.

The methods (``majority``, ``dawid_skene``) are those of :mod:`datastore.consensus`; a curation
adds the filters, a minimum gold accuracy per annotator and near-duplicate removal.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import polars as pl
from PIL import Image

from datastore.consensus import METHODS, Method, consensus
from datastore.datasets import (
    DatasetFilters,
    DatasetVersion,
    check_dataset_name,
    create_dataset_version,
    judgments_frame,
)
from datastore.errors import StoreError
from datastore.exports import export_dataset
from datastore.sql import scalar
from datastore.store import Store
from labeling.errors import LabelingError
from labeling.queue import gold_accuracy


class CurationError(LabelingError):
    """A curation is malformed, missing, or cannot be built."""


@dataclass(frozen=True)
class Curation:
    """A named, saved way of turning judgments into a dataset version.

    Attributes:
        name: the curation's name, also the name of the dataset versions it builds.
        method: ``majority`` or ``dawid_skene`` (see the module docstring).
        filters: which judgments count and which pairs are kept.
        min_gold_accuracy: annotators whose accuracy on gold pairs is below this are left out;
            annotators who judged no gold pair are kept. 0 keeps everyone.
        near_duplicate_distance: pairs whose two images' 64-bit dHashes differ in at most this
            many bits are left out; None keeps them.
    """

    name: str
    method: Method = "majority"
    filters: DatasetFilters = field(default_factory=DatasetFilters)
    min_gold_accuracy: float = 0.0
    near_duplicate_distance: int | None = None

    def __post_init__(self) -> None:
        try:
            check_dataset_name(self.name)
        except StoreError as e:
            raise CurationError(f"curation name: {e}") from e
        if self.method not in METHODS:
            raise CurationError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 <= self.min_gold_accuracy <= 1.0:
            raise CurationError(f"min_gold_accuracy must be within [0, 1], got {self.min_gold_accuracy}")
        if self.near_duplicate_distance is not None and not 0 <= self.near_duplicate_distance <= 64:
            raise CurationError(
                f"near_duplicate_distance must be within [0, 64], got {self.near_duplicate_distance}"
            )

    def settings(self) -> dict:
        """Everything but the name and method, as stored in the ``curations`` table."""
        return {
            "filters": asdict(self.filters),
            "min_gold_accuracy": self.min_gold_accuracy,
            "near_duplicate_distance": self.near_duplicate_distance,
        }

    @classmethod
    def from_row(cls, name: str, method: str, settings: dict) -> Curation:
        filters = {k: tuple(v) if isinstance(v, list) else v for k, v in settings["filters"].items()}
        return cls(
            name=name,
            method=method,
            filters=DatasetFilters(**filters),
            min_gold_accuracy=settings["min_gold_accuracy"],
            near_duplicate_distance=settings["near_duplicate_distance"],
        )


def save_curation(store: Store, curation: Curation, *, replace: bool = False) -> None:
    """Save a curation; an existing one of the same name is replaced only with ``replace``."""
    with store.write() as con:
        exists = scalar(con, "SELECT count(*) FROM curations WHERE name = ?", [curation.name])
        if exists and not replace:
            raise CurationError(f"a curation named {curation.name!r} exists; replace it explicitly")
        con.execute("DELETE FROM curations WHERE name = ?", [curation.name])
        con.execute(
            "INSERT INTO curations (name, method, filters) VALUES (?, ?, ?)",
            [curation.name, curation.method, json.dumps(curation.settings())],
        )


def load_curation(store: Store, name: str) -> Curation:
    """A saved curation by name."""
    with store.read() as con:
        rows = con.execute("SELECT name, method, filters FROM curations WHERE name = ?", [name]).fetchall()
    if not rows:
        raise CurationError(f"no curation named {name!r}; `workbench curation list` shows them")
    name, method, settings = rows[0]
    return Curation.from_row(name, method, json.loads(settings))


def list_curations(store: Store) -> list[Curation]:
    """Every saved curation, by name."""
    with store.read() as con:
        rows = con.execute("SELECT name, method, filters FROM curations ORDER BY name").fetchall()
    return [Curation.from_row(name, method, json.loads(settings)) for name, method, settings in rows]


def image_dhashes(store: Store, image_ids: list[str]) -> dict[str, imagehash.ImageHash]:
    """The 64-bit difference hash (dHash) of each stored image, by image id."""
    if not image_ids:
        return {}
    with store.read() as con:
        rows = con.execute(
            "SELECT id, path FROM images WHERE id IN (SELECT unnest(?))", [image_ids]
        ).fetchall()
    hashes = {}
    for image_id, path in rows:
        with Image.open(store.media.resolve(path)) as im:
            hashes[image_id] = imagehash.dhash(im)
    return hashes


def near_duplicate_pairs(store: Store, judgments: pl.DataFrame, max_distance: int) -> pl.DataFrame:
    """Pairs of ``judgments`` whose two images are near-duplicates: dHash distance <= ``max_distance``.

    Returns:
        pair_id, image_a, image_b, distance (differing bits out of 64), sorted by distance then pair.
    """
    pairs = judgments.select("pair_id", "image_a", "image_b").unique().sort("pair_id")
    hashes = image_dhashes(store, sorted(set(pairs["image_a"].to_list()) | set(pairs["image_b"].to_list())))
    distances = [int(hashes[a] - hashes[b]) for a, b in pairs.select("image_a", "image_b").iter_rows()]
    return (
        pairs.with_columns(pl.Series("distance", distances, dtype=pl.Int64))
        .filter(pl.col("distance") <= max_distance)
        .sort("distance", "pair_id")
    )


@dataclass(frozen=True)
class CuratedJudgments:
    """The judgments a curation counts, and what its curation-level filters took out.

    Attributes:
        filters: the dataset filters with annotators below the gold accuracy added to
            ``exclude_annotators``.
        judgments: the counted judgments (near-duplicate pairs removed).
        near_duplicates: pair ids left out as near-duplicates.
    """

    filters: DatasetFilters
    judgments: pl.DataFrame
    near_duplicates: tuple[int, ...]


def curated_judgments(store: Store, curation: Curation) -> CuratedJudgments:
    """Apply a curation's filters: the judgments its consensus is computed from."""
    below = tuple(g.annotator for g in gold_accuracy(store) if g.accuracy < curation.min_gold_accuracy)
    excluded = tuple(sorted(set(curation.filters.exclude_annotators) | set(below)))
    filters = DatasetFilters(**{**asdict(curation.filters), "exclude_annotators": excluded})
    judgments = judgments_frame(store, filters)
    dropped: tuple[int, ...] = ()
    if curation.near_duplicate_distance is not None and not judgments.is_empty():
        dropped = tuple(near_duplicate_pairs(store, judgments, curation.near_duplicate_distance)["pair_id"])
        judgments = judgments.filter(~pl.col("pair_id").is_in(dropped))
    return CuratedJudgments(filters=filters, judgments=judgments, near_duplicates=dropped)


def build_curation(store: Store, curation: Curation | str) -> DatasetVersion:
    """Build a (saved or given) curation into a dataset version named after it.

    The same curation over the same judgments gives the same content hash and version id. The
    manifest records the curation's name, method and settings, the annotators left out and the
    near-duplicate pairs dropped.
    """
    if isinstance(curation, str):
        curation = load_curation(store, curation)
    curated = curated_judgments(store, curation)
    if curated.judgments.is_empty():
        raise CurationError(f"no judgment passes the filters of curation {curation.name!r}")
    labels = consensus(curated.judgments, curation.method)
    record = {
        "name": curation.name,
        "method": curation.method,
        **curation.settings(),
        "excluded_annotators": list(curated.filters.exclude_annotators),
        "near_duplicate_pairs": list(curated.near_duplicates),
    }
    return create_dataset_version(store, curation.name, curated.filters, consensus=labels, curation=record)


def export_download(version: DatasetVersion, fmt: str) -> tuple[str, bytes]:
    """A dataset version in one format as a single file to download: (file name, bytes).

    ``pickapic`` is one Parquet file; ``jsonl`` (a file plus an images folder) and ``hf`` (a
    folder) come as a zip archive of what :func:`datastore.exports.export_dataset` writes.
    """
    tmp = Path(tempfile.mkdtemp(prefix="workbench-export-"))
    try:
        target = export_dataset(version, fmt, tmp, show_progress=False)
        if target.is_file() and fmt == "pickapic":
            return target.name, target.read_bytes()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
                archive.write(path, path.relative_to(tmp).as_posix())
        return f"{version.id}-{fmt}.zip", buffer.getvalue()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
