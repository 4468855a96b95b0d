"""Import, dataset versions and export: round trips exactly, rejects bad input without a trace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import polars as pl
import pyarrow.parquet as pq
import pytest
from pickapic_data import drawn_image, pickapic_rows, write_parquet

from datastore.datasets import DatasetFilters, create_dataset_version, find_dataset_version
from datastore.errors import ImportFormatError, MediaError, NotFoundError, StoreError
from datastore.exports import export_dataset
from datastore.formats import import_pickapic
from datastore.media import inspect_image
from datastore.records import NewJudgment, ensure_annotator, insert_judgments, store_stats
from datastore.schema import MIGRATIONS
from datastore.store import Store


def _snapshot(store: Store) -> tuple[dict, list[str]]:
    """Everything a failed import must leave untouched: row counts and media files."""
    with store.read() as con:
        counts = store_stats(con)
    files = sorted(str(p.relative_to(store.home)) for p in (store.home / "media").rglob("*") if p.is_file())
    return counts, files


def test_pickapic_import_export_round_trip(store: Store, pickapic_file: Path, tmp_path: Path) -> None:
    report = import_pickapic(store, pickapic_file, show_progress=False)
    assert (report.rows, report.pairs, report.judgments, report.images) == (12, 12, 12, 24)
    assert report.annotators == 3

    version = create_dataset_version(store, "roundtrip")
    exported = pq.read_table(export_dataset(version, "pickapic", tmp_path / "out", show_progress=False)).to_pylist()
    original = pq.read_table(pickapic_file).to_pylist()
    by_uid_0 = {inspect_image(r["jpg_0"], max_bytes=1 << 30).id: r for r in original}
    assert len(exported) == len(original) == 12
    for row in exported:
        source = by_uid_0[row["image_0_uid"]]
        assert row["caption"] == source["caption"]
        assert (row["label_0"], row["label_1"]) == (source["label_0"], source["label_1"])
        assert row["jpg_0"] == source["jpg_0"] and row["jpg_1"] == source["jpg_1"]
        assert row["model_0"] == "model-x" and row["model_1"] == "model-y"
        assert row["n_judgments"] == 1 and row["kind"] == "final"
    assert sum(r["label_0"] == 0.5 for r in exported) == 3


def test_reimporting_the_same_file_adds_nothing(store: Store, pickapic_file: Path) -> None:
    import_pickapic(store, pickapic_file, show_progress=False)
    before = _snapshot(store)
    again = import_pickapic(store, pickapic_file, show_progress=False)
    assert (again.pairs, again.judgments, again.images) == (0, 0, 0)
    assert _snapshot(store) == before


def _corrupt(cols: dict) -> dict:
    cols["jpg_1"][5] = cols["jpg_1"][5][:40]  # a truncated PNG
    return cols


def _not_image(cols: dict) -> dict:
    cols["jpg_0"][2] = b"this is not an image at all"
    return cols


def _bad_label(cols: dict) -> dict:
    cols["label_0"][7], cols["label_1"][7] = 0.7, 0.3
    return cols


def _traversal(cols: dict) -> dict:
    cols["image_1_uid"][3] = "../../etc/passwd"
    return cols


def _missing_column(cols: dict) -> dict:
    del cols["label_1"]
    return cols


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_corrupt, r"row 5, column 'jpg_1': not a readable image"),
        (_not_image, r"row 2, column 'jpg_0': not a readable image"),
        (_bad_label, r"row 7, column 'label_0': labels \(0.7, 0.3\) must be"),
        (_traversal, r"row 3, column 'image_1_uid': '../../etc/passwd' is not a plain identifier"),
        (_missing_column, r"column 'label_1': .* lacks the Pick-a-Pic column\(s\) \['label_1'\]"),
    ],
)
def test_bad_import_is_rejected_and_changes_nothing(store: Store, tmp_path: Path, mutate, expected) -> None:
    import_pickapic(store, write_parquet(tmp_path / "good.parquet", pickapic_rows(4)), show_progress=False)
    before = _snapshot(store)
    bad = write_parquet(tmp_path / "bad.parquet", mutate(pickapic_rows(10)))
    with pytest.raises(ImportFormatError, match=expected):
        import_pickapic(store, bad, show_progress=False)
    assert _snapshot(store) == before


@pytest.mark.parametrize("content", [b"", b"PAR1 not really parquet"])
def test_empty_or_non_parquet_file_is_rejected(store: Store, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(content)
    before = _snapshot(store)
    with pytest.raises(ImportFormatError, match="is empty|is not a Parquet file"):
        import_pickapic(store, path, show_progress=False)
    assert _snapshot(store) == before


def test_media_store_guards(store: Store) -> None:
    with pytest.raises(MediaError, match="leads outside the media folder"):
        store.media.resolve("../workbench.duckdb")
    with pytest.raises(MediaError, match="must be relative"):
        store.media.resolve("/etc/passwd")
    small = Store.open(store.home)
    small.media.max_bytes = 100
    with pytest.raises(MediaError, match="exceeds the limit of 100 bytes"):
        small.media.put_bytes(drawn_image(1, size=64))
    record = store.media.put_bytes(drawn_image(3))
    assert store.media.resolve(record.path).read_bytes() == drawn_image(3)
    assert store.media.put_bytes(drawn_image(3)) == record  # content-addressed: stored once


def test_dataset_version_is_deterministic_and_immutable(store: Store, pickapic_file: Path) -> None:
    import_pickapic(store, pickapic_file, show_progress=False)
    first = create_dataset_version(store, "v")
    second = create_dataset_version(store, "v")
    assert first.content_hash == second.content_hash and first.id == second.id
    assert first.counts["ties"] == 3 and first.n_pairs == 12

    no_ties = create_dataset_version(store, "v", DatasetFilters(include_ties=False))
    assert no_ties.n_pairs == 9 and no_ties.content_hash != first.content_hash

    # A new judgment changes the consensus of pair 1 (a 1-1 draw becomes a tie): a new hash, the old folder untouched.
    old_bytes = first.pairs_file.read_bytes()
    with store.write() as con:
        annotator = ensure_annotator(con, "late")
        pair_id, outcome = con.execute(
            "SELECT pair_id, outcome FROM judgments WHERE outcome IN ('a', 'b') ORDER BY pair_id LIMIT 1"
        ).fetchall()[0]
        insert_judgments(con, [NewJudgment(pair_id, annotator, "app", "b" if outcome == "a" else "a")])
    third = create_dataset_version(store, "v")
    assert third.content_hash != first.content_hash
    assert first.pairs_file.read_bytes() == old_bytes
    frame = pl.read_parquet(third.pairs_file)
    changed = frame.filter(pl.col("pair_id") == pair_id).row(0, named=True)
    assert (changed["label_0"], changed["n_judgments"], changed["agreement"]) == (0.5, 2, 0.0)

    assert find_dataset_version(store, first.id).id == first.id
    with pytest.raises(NotFoundError):
        find_dataset_version(store, "nope")


def test_dataset_version_needs_pairs_and_a_plain_name(store: Store) -> None:
    with pytest.raises(StoreError, match="no judged pair matches"):
        create_dataset_version(store, "empty")
    with pytest.raises(StoreError, match="must be letters"):
        create_dataset_version(store, "../evil")


def test_jsonl_and_hf_exports_load(store: Store, pickapic_file: Path, tmp_path: Path) -> None:
    import_pickapic(store, pickapic_file, show_progress=False)
    version = create_dataset_version(store, "fmt")

    jsonl = export_dataset(version, "jsonl", tmp_path / "jsonl", show_progress=False)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 12
    assert all((jsonl.parent / r["image_0"]).read_bytes() for r in rows)

    folder = export_dataset(version, "hf", tmp_path / "hf", show_progress=False)
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)  # the folder is self-contained
    loaded = datasets.load_dataset(str(moved), split="train")
    assert loaded.num_rows == 12
    assert sorted(loaded["label_0"]) == sorted(r["label_0"] for r in rows)
    assert loaded[0]["jpg_0"] == (version.path / pl.read_parquet(version.pairs_file)["image_0"][0]).read_bytes()


def test_migrations_are_idempotent(store: Store) -> None:
    latest = max(version for version, _ in MIGRATIONS)  # numbers are appended in the order they were taken
    assert store.schema_version() == latest
    again = Store.open(store.home)
    assert again.schema_version() == latest
    with again.read() as con:
        assert con.execute("SELECT count(*) FROM schema_migrations").fetchall() == [(len(MIGRATIONS),)]
