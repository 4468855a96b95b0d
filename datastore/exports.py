"""Exports of a dataset version: Pick-a-Pic-compatible Parquet, JSONL, and a folder that Hugging
Face ``datasets`` loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from datastore.atomic import writing
from datastore.datasets import DatasetVersion
from datastore.errors import StoreError


def pickapic_table(version: DatasetVersion, *, show_progress: bool = False) -> pa.Table:
    """The dataset version as a Pick-a-Pic-compatible table, images as bytes, plus our columns."""
    frame = pl.read_parquet(version.pairs_file)
    jpg_0, jpg_1 = [], []
    for a, b in tqdm(frame.select("image_0", "image_1").iter_rows(), total=frame.height, desc="images",
                     unit="pair", disable=not show_progress):
        jpg_0.append((version.path / a).read_bytes())
        jpg_1.append((version.path / b).read_bytes())
    out = frame.with_columns(
        pl.Series("jpg_0", jpg_0, dtype=pl.Binary),
        pl.Series("jpg_1", jpg_1, dtype=pl.Binary),
        pl.when(pl.col("label_0") > pl.col("label_1")).then(pl.col("image_0_uid"))
        .when(pl.col("label_1") > pl.col("label_0")).then(pl.col("image_1_uid"))
        .otherwise(None).alias("best_image_uid"),
        pl.col("pair_id").alias("ranking_id"),
        pl.lit(version.created_at).alias("created_at"),
        pl.lit(True).alias("has_label"),
        (pl.col("image_0_uid") != pl.col("image_1_uid")).alias("are_different"),
        pl.lit(version.id).alias("dataset_version"),
    ).rename({"prompt": "caption"})
    columns = [
        "caption", "jpg_0", "jpg_1", "label_0", "label_1", "best_image_uid", "image_0_uid", "image_1_uid",
        "model_0", "model_1", "ranking_id", "created_at", "has_label", "are_different",
        "pair_id", "kind", "timestep", "n_judgments", "agreement", "dataset_version",
    ]
    return out.select(columns).to_arrow()


def export_dataset(version: DatasetVersion, fmt: str, out: Path | str, *, show_progress: bool = True) -> Path:
    """Write a dataset version in one format; returns the written file or folder.

    Formats:
        pickapic: ``<out>/<version>.parquet``, Pick-a-Pic columns (images as bytes) plus ours.
        jsonl: ``<out>/<version>.jsonl`` with image paths relative to ``<out>``, images under ``<out>/images/``.
        hf: a folder ``<out>/<version>/`` with ``data/train-00000-of-00001.parquet`` and a dataset card,
            loadable with ``datasets.load_dataset(folder)``.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if fmt == "pickapic":
            target = out / f"{version.id}.parquet"
            with writing(target) as tmp:
                pq.write_table(pickapic_table(version, show_progress=show_progress), tmp)
            return target
        if fmt == "jsonl":
            return _export_jsonl(version, out)
        if fmt == "hf":
            target = out / version.id
            (target / "data").mkdir(parents=True, exist_ok=True)
            with writing(target / "data" / "train-00000-of-00001.parquet") as tmp:
                pq.write_table(pickapic_table(version, show_progress=show_progress), tmp)
            (target / "README.md").write_text(_dataset_card(version))
            return target
    except OSError as e:
        raise StoreError(f"could not export {version.id} to {out}: {e}") from e
    raise StoreError(f"unknown export format {fmt!r}: choose pickapic, jsonl or hf")


def _export_jsonl(version: DatasetVersion, out: Path) -> Path:
    frame = pl.read_parquet(version.pairs_file)
    images = out / "images"
    images.mkdir(exist_ok=True)
    for rel in set(frame["image_0"].to_list()) | set(frame["image_1"].to_list()):
        target = out / rel
        if not target.exists():
            shutil.copyfile(version.path / rel, target)
    target = out / f"{version.id}.jsonl"
    with writing(target) as tmp, tmp.open("w") as f:
        for row in frame.iter_rows(named=True):
            f.write(json.dumps({**row, "dataset_version": version.id}) + "\n")
    return target


def _dataset_card(version: DatasetVersion) -> str:
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
---
# {version.name} ({version.id})

Pairwise preferences exported from the preference workbench.

- pairs: {version.n_pairs}
- content hash: `{version.content_hash}`
- filters: `{json.dumps(version.filters)}`

Columns follow Pick-a-Pic (caption, jpg_0, jpg_1, label_0, label_1 with 0.5/0.5 for ties, image
uids, model names) plus pair_id, kind (final or step), timestep, n_judgments and agreement.
"""
