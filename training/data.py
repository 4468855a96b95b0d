"""Reading dataset snapshot folders (docs/dataset-snapshot.md) and ordering pairs for training.

Training touches only the snapshot folder, so a copy of it is all a training node needs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from training.errors import TrainingError

PAIR_COLUMNS = ("pair_id", "prompt", "image_0", "image_1", "label_0", "label_1", "kind")


class SnapshotError(TrainingError, ValueError):
    """A dataset snapshot folder is missing or malformed."""


def read_pairs(snapshot: str | Path) -> pl.DataFrame:
    """Reads ``pairs.parquet`` of a snapshot, with image paths made absolute.

    The whole snapshot is checked first, so that a bad one fails before any work: the manifest,
    the Parquet file, its columns, and every image file it names: there, and its sha256 the
    row's ``image_0_uid`` / ``image_1_uid`` (or, without those columns, an image PIL can verify).

    Args:
        snapshot: Snapshot folder.

    Returns:
        Every row of ``pairs.parquet``, sorted by ``pair_id``; ``image_0`` and ``image_1`` hold
        absolute paths.

    Raises:
        SnapshotError: The folder, the manifest, the Parquet file, a needed column or an image
            file is missing or malformed, or an image file is damaged.
    """
    folder = Path(snapshot)
    table_path = folder / "pairs.parquet"
    if not table_path.is_file():
        raise SnapshotError(f"{folder} is not a dataset snapshot: {table_path} does not exist")
    snapshot_hash(folder)
    try:
        table = pl.read_parquet(table_path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise SnapshotError(f"{table_path} is not a readable Parquet file: {e}") from e
    missing = [c for c in PAIR_COLUMNS if c not in table.columns]
    if missing:
        raise SnapshotError(f"{table_path} lacks the columns {', '.join(missing)}")
    root = folder.resolve()
    names = set(table["image_0"].to_list()) | set(table["image_1"].to_list())
    absent = sorted(
        str(n) for n in names
        if not isinstance(n, str) or Path(n).is_absolute() or ".." in Path(n).parts or not (root / n).is_file()
    )  # fmt: skip
    if absent:
        raise SnapshotError(
            f"{folder}: {len(absent)} image file(s) named in pairs.parquet are missing or outside the snapshot, "
            f"e.g. {absent[0]}"
        )
    damaged = _damaged_image(root, table)
    if damaged:
        raise SnapshotError(f"{folder}: the image file {damaged[0]} named in pairs.parquet is damaged: {damaged[1]}")
    return table.sort("pair_id").with_columns(
        (pl.lit(str(root) + "/") + pl.col("image_0")).alias("image_0"),
        (pl.lit(str(root) + "/") + pl.col("image_1")).alias("image_1"),
    )


def _damaged_image(root: Path, table: pl.DataFrame) -> tuple[str, str] | None:
    """The first image file (by name) that is not the image its rows name, and why: its sha256 is
    not the row's uid where the table has uid columns, else PIL cannot open and verify it."""
    uids: dict[str, str | None] = {}
    for side in ("image_0", "image_1"):
        column = table[f"{side}_uid"] if f"{side}_uid" in table.columns else pl.Series([None] * table.height)
        uids.update(zip(table[side].to_list(), column.to_list(), strict=True))
    for name, uid in sorted(uids.items()):
        if uid is not None:
            with (root / name).open("rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != uid:
                    return name, f"its sha256 is not its uid in pairs.parquet ({uid})"
            continue
        try:
            with Image.open(root / name) as image:
                image.verify()
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds on a bad file; each means unreadable
            return name, f"not a readable image ({type(e).__name__}: {e})"
    return None


def snapshot_hash(snapshot: str | Path) -> str:
    """Returns the snapshot's content hash from its ``manifest.json``.

    Raises:
        SnapshotError: the manifest is missing, not JSON, or has no content hash.
    """
    manifest = Path(snapshot) / "manifest.json"
    if not manifest.is_file():
        raise SnapshotError(f"{Path(snapshot)} is not a dataset snapshot: {manifest} does not exist")
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SnapshotError(f"{manifest} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("content_hash"), str):
        raise SnapshotError(f"{manifest} must be a JSON object with a content_hash")
    if not isinstance(data.get("id", ""), str):
        raise SnapshotError(f"{manifest}: id must be text, got {data['id']!r}")
    return data["content_hash"]


@dataclass(frozen=True)
class PreferencePair:
    """One decided pair, oriented winner first."""

    pair_id: int
    prompt: str
    winner: Path
    loser: Path


def preference_pairs(snapshot: str | Path) -> list[PreferencePair]:
    """Loads the decided final-image pairs of a snapshot: winner = the image labelled 1, ties dropped.

    Step pairs (predicted x0 of noisy steps) are left to the step-aware preference model.

    Args:
        snapshot: Snapshot folder.

    Returns:
        Pairs in ``pair_id`` order.

    Raises:
        SnapshotError: The snapshot is malformed or holds no decided final pair.
    """
    table = read_pairs(snapshot).filter((pl.col("kind") == "final") & (pl.col("label_0") != 0.5))
    if table.is_empty():
        raise SnapshotError(f"{Path(snapshot)} has no final pair with a winner (ties are dropped)")
    pairs = []
    for row in table.iter_rows(named=True):
        first_wins = row["label_0"] > row["label_1"]
        winner, loser = (row["image_0"], row["image_1"]) if first_wins else (row["image_1"], row["image_0"])
        pairs.append(PreferencePair(row["pair_id"], row["prompt"], Path(winner), Path(loser)))
    return pairs


def load_image(path: Path, resolution: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Loads an image, resizes its shorter side to ``resolution`` and centre-crops a square.

    Args:
        path: Image file.
        resolution: Output side in pixels.

    Returns:
        The pixels in [-1, 1], shape (3, resolution, resolution); the original (height, width);
        and the crop's (top, left) in the resized image (SDXL micro-conditioning).
    """
    with Image.open(path) as image:
        image = image.convert("RGB")
        original = (image.height, image.width)
        scale = resolution / min(image.size)
        width, height = (
            max(resolution, round(image.width * scale)),
            max(resolution, round(image.height * scale)),
        )
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        top, left = (height - resolution) // 2, (width - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
    return pixels / 127.5 - 1.0, original, (top, left)


def stream_indices(n_items: int, seed: int, start: int, count: int) -> list[int]:
    """Positions ``start .. start + count - 1`` of an endless stream of shuffled epochs.

    Epoch ``e`` is a permutation of ``range(n_items)`` drawn from ``seed`` and ``e``, so any
    position can be found again on resume, and a global batch reads the same items however it
    is split over processes and accumulation micro-steps.

    Args:
        n_items: Dataset size.
        seed: Run seed.
        start: First stream position.
        count: How many positions.

    Returns:
        Item indices in stream order.
    """
    out: list[int] = []
    position = start
    while len(out) < count:
        epoch, offset = divmod(position, n_items)
        order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(count - len(out), n_items - offset)
        out.extend(order[offset : offset + take].tolist())
        position += take
    return out
