"""Pick-a-Pic-compatible Parquet import: every row checked (images, labels, names, repeats and
contradictions, also against earlier imports) before anything is written. Exports are
`datastore.exports`."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from datastore.errors import ImportFormatError, MediaError
from datastore.media import MediaStore, StoredImage
from datastore.records import (
    OUTCOMES,
    ImageRow,
    NewJudgment,
    NewPair,
    ensure_annotator,
    insert_images,
    insert_judgments,
    insert_pairs,
    upsert_prompts,
)
from datastore.sql import scalar
from datastore.store import Store

PICKAPIC_REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
_UID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_BATCH_ROWS = 2048
MAX_CAPTION_CHARS = 10_000
"""Longest caption an import accepts."""
MAX_NAME_CHARS = 256
"""Longest user id or model name an import accepts (image uids and ranking ids: 128)."""
_OPTIONAL = ("image_0_uid", "image_1_uid", "model_0", "model_1", "user_id", "ranking_id")


@dataclass(frozen=True)
class ImportReport:
    """What an import added (rows already in the store are not counted again)."""

    rows: int
    pairs: int
    judgments: int
    images: int
    annotators: int
    duplicates: int = 0
    """Rows skipped as repeats of an earlier row of the file or of a judgment imported before (same
    ranking id, or same user and two images in either order, the same image preferred)."""


def _label_to_outcome(label_0: float, label_1: float) -> str | None:
    if label_0 == 1.0 and label_1 == 0.0:
        return "a"
    if label_0 == 0.0 and label_1 == 1.0:
        return "b"
    if label_0 == 0.5 and label_1 == 0.5:
        return "tie"
    return None


def _iter_batches(path: Path, columns: list[str] | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row number, batch) over a Parquet file; row numbers start at 0.

    Raises:
        ImportFormatError: a page cannot be read (corrupt header or compressed data), naming the
            first row of the batch and the first column that cannot be read.
    """
    parquet = pq.ParquetFile(path)
    offset = 0
    batches = parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as e:
            raise ImportFormatError(
                f"corrupt Parquet data in {path.name} ({e})".replace("\n", " ").strip(),
                row=offset,
                column=_unreadable_column(path, offset, columns or parquet.schema_arrow.names),
            ) from None
        yield offset, batch
        offset += batch.num_rows


def _unreadable_column(path: Path, offset: int, columns: list[str]) -> str | None:
    """The first column that cannot be read through row ``offset``'s batch (the slow way: on errors only)."""
    for column in columns:
        try:
            rows = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS, columns=[column]):
                rows += batch.num_rows
                if rows > offset:
                    break
        except (OSError, pa.ArrowException):
            return column
    return None


def _batch_columns(batch: pa.RecordBatch, offset: int) -> dict[str, list]:
    """A batch's columns as Python lists; text that is not UTF-8 is named by row and column."""
    cols = {}
    for name in batch.schema.names:
        column = batch.column(name)
        try:
            cols[name] = column.to_pylist()
        except (UnicodeDecodeError, pa.ArrowException, ValueError) as e:
            for i in range(len(column)):
                try:
                    column[i].as_py()
                except (UnicodeDecodeError, pa.ArrowException, ValueError):
                    raise ImportFormatError(f"not valid text ({e})", row=offset + i, column=name) from None
            raise ImportFormatError(f"cannot be read ({e})", row=offset, column=name) from None
    return cols


@dataclass(frozen=True)
class _Row:
    number: int
    caption: str
    image_0: StoredImage
    image_1: StoredImage
    outcome: str
    uid_0: str | None
    uid_1: str | None
    model_0: str | None
    model_1: str | None
    user: str | None
    ranking: str

    @property
    def annotator(self) -> str:
        """The name of the annotator the row's judgment is recorded under."""
        return f"pickapic:{self.user}" if self.user else "pickapic"

    def judged(self) -> tuple[frozenset[str], str, str]:
        """What the row says, whatever the order of its images: (the two images, the annotator, the
        preferred image or ``tie``)."""
        images = frozenset((self.image_0.id, self.image_1.id))
        return images, self.annotator, _preferred(self.image_0.id, self.image_1.id, self.outcome)

    def swapped(self) -> _Row:
        """The same judgment with the two images in the other order."""
        return dataclasses.replace(
            self, image_0=self.image_1, image_1=self.image_0, uid_0=self.uid_1, uid_1=self.uid_0,
            model_0=self.model_1, model_1=self.model_0, outcome=_SWAPPED.get(self.outcome, self.outcome),
        )  # fmt: skip


_SWAPPED = {"a": "b", "b": "a"}


def _preferred(image_a: str, image_b: str, outcome: str) -> str:
    """The image an outcome of the pair (image_a, image_b) prefers, or the outcome when it prefers neither."""
    return {"a": image_a, "b": image_b}.get(outcome, outcome)


def _describe(preferred: str) -> str:
    """A preferred image or outcome (see :func:`_preferred`) for an error message."""
    return preferred if preferred in OUTCOMES else f"image {preferred[:12]}"


def _validate_file(path: Path, media: MediaStore) -> tuple[list[_Row], int]:
    """Check every row of a Pick-a-Pic file; return the rows to import (no image bytes, duplicates
    dropped) and how many duplicates were dropped."""
    if not path.is_file():
        raise ImportFormatError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ImportFormatError(f"{path} is empty")
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise ImportFormatError(f"{path} is not a Parquet file: {e}") from e
    missing = [c for c in PICKAPIC_REQUIRED if c not in schema.names]
    if missing:
        raise ImportFormatError(f"{path} lacks the Pick-a-Pic column(s) {missing}", column=missing[0])
    wanted = [c for c in (*PICKAPIC_REQUIRED, *_OPTIONAL) if c in schema.names]
    rows: list[_Row] = []
    by_ranking: dict[str, _Row] = {}
    by_pair: dict[tuple[frozenset[str], str], _Row] = {}
    duplicates = 0
    for offset, batch in tqdm(_iter_batches(path, wanted), desc="checking", unit="batch", leave=False):
        cols = _batch_columns(batch, offset)
        for i in range(batch.num_rows):
            row = _validate_row(cols, i, offset + i, file_hash, media)
            if _is_duplicate(row, by_ranking, by_pair):
                duplicates += 1
                continue
            rows.append(row)
    if not rows:
        raise ImportFormatError(f"{path} has no rows")
    return rows, duplicates


def _is_duplicate(
    row: _Row, by_ranking: dict[str, _Row], by_pair: dict[tuple[frozenset[str], str], _Row]
) -> bool:
    """Whether ``row`` repeats an earlier row; a row that contradicts one is an ImportFormatError."""
    images, annotator, preferred = judged = row.judged()
    same = by_ranking.get(row.ranking)
    if same is not None:
        if same.judged() != judged:
            raise ImportFormatError(
                f"ranking id {row.ranking!r} is also row {same.number}, with other images, user or labels",
                row=row.number,
                column="ranking_id",
            )
        return True
    same = by_pair.get((images, annotator))
    if same is not None:
        if same.judged()[2] != preferred:
            raise ImportFormatError(
                f"contradicts row {same.number}: the same user judged the same two images, preferring "
                f"{_describe(same.judged()[2])} there and {_describe(preferred)} here",
                row=row.number,
                column="label_0",
            )
        return True
    by_ranking[row.ranking] = by_pair[(images, annotator)] = row
    return False


_MATCHING_PAIRS = (
    "SELECT i.number, i.annotator, p.id AS pair_id, p.image_a, p.image_b FROM incoming_rows i "
    "JOIN pairs p ON p.image_a = i.image_0 AND p.image_b = i.image_1 "
    "UNION ALL SELECT i.number, i.annotator, p.id, p.image_a, p.image_b FROM incoming_rows i "
    "JOIN pairs p ON p.image_a = i.image_1 AND p.image_b = i.image_0"
)
"""The store's pairs of each incoming row's two images, in either order."""


@contextmanager
def _incoming(con: duckdb.DuckDBPyConnection, rows: list[_Row]) -> Iterator[None]:
    """The rows as the table ``incoming_rows`` (number, ranking, image_0, image_1, annotator) of ``con``."""
    table = pa.table({
        "number": pa.array([r.number for r in rows], pa.int64()),
        "ranking": pa.array([r.ranking for r in rows], pa.string()),
        "image_0": pa.array([r.image_0.id for r in rows], pa.string()),
        "image_1": pa.array([r.image_1.id for r in rows], pa.string()),
        "annotator": pa.array([r.annotator for r in rows], pa.string()),
    })  # fmt: skip
    con.register("incoming_rows", table)
    try:
        yield
    finally:
        con.unregister("incoming_rows")


def _not_imported_before(con: duckdb.DuckDBPyConnection, rows: list[_Row]) -> list[_Row]:
    """The rows that no judgment imported before already records.

    A row repeating one (same ranking id, or same annotator and two images in either order, with
    the same image preferred) is dropped; one contradicting it is an ImportFormatError.
    """
    with _incoming(con, rows):
        stored = con.execute(
            "SELECT i.number, j.id, j.external_id, p.image_a, p.image_b, a.name, j.outcome FROM incoming_rows i "
            "JOIN judgments j ON j.source = 'import' AND j.external_id = i.ranking "
            "JOIN pairs p ON p.id = j.pair_id JOIN annotators a ON a.id = j.annotator_id "
            "UNION ALL SELECT m.number, j.id, j.external_id, m.image_a, m.image_b, a.name, j.outcome "
            f"FROM ({_MATCHING_PAIRS}) m JOIN judgments j ON j.pair_id = m.pair_id AND j.source = 'import' "
            "JOIN annotators a ON a.id = j.annotator_id AND a.name = m.annotator "
            "ORDER BY 1, 2"
        ).fetchall()
    by_number = {r.number: r for r in rows}
    for number, judgment, ranking, image_a, image_b, annotator, outcome in stored:
        row = by_number[number]
        before = _preferred(image_a, image_b, outcome)
        if ranking == row.ranking and (frozenset((image_a, image_b)), annotator, before) != row.judged():
            raise ImportFormatError(
                f"ranking id {row.ranking!r} was imported before (judgment {judgment}) with other images, user or labels",
                row=number,
                column="ranking_id",
            )
        if before != row.judged()[2]:
            raise ImportFormatError(
                f"contradicts judgment {judgment}, imported before: the same user judged the same two images, "
                f"preferring {_describe(before)} there and {_describe(row.judged()[2])} here",
                row=number,
                column="label_0",
            )
    repeats = {number for number, *_ in stored}
    return [r for r in rows if r.number not in repeats]


def _oriented(con: duckdb.DuckDBPyConnection, rows: list[_Row]) -> list[_Row]:
    """The rows with their images in the order of the store's oldest pair of the same two images,
    else of the first row with them, so that two images make one pair whatever their order."""
    with _incoming(con, rows):
        stored = con.execute(f"SELECT image_a, image_b FROM ({_MATCHING_PAIRS}) ORDER BY pair_id").fetchall()
    first: dict[frozenset[str], str] = {}
    for image_a, image_b in stored:
        first.setdefault(frozenset((image_a, image_b)), image_a)
    out = []
    for r in rows:
        image_a = first.setdefault(frozenset((r.image_0.id, r.image_1.id)), r.image_0.id)
        out.append(r if image_a == r.image_0.id else r.swapped())
    return out


def _validate_row(cols: dict, i: int, row: int, file_hash: str, media: MediaStore) -> _Row:
    caption = cols["caption"][i]
    if not isinstance(caption, str) or not caption.strip():
        raise ImportFormatError("caption is empty or not text", row=row, column="caption")
    if len(caption) > MAX_CAPTION_CHARS:
        raise ImportFormatError(
            f"caption has {len(caption)} characters, more than {MAX_CAPTION_CHARS}", row=row, column="caption"
        )
    labels = []
    for column in ("label_0", "label_1"):
        value = cols[column][i]
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            raise ImportFormatError(f"label must be a number, got {value!r}", row=row, column=column)
        labels.append(float(value))
    outcome = _label_to_outcome(*labels)
    if outcome is None:
        raise ImportFormatError(
            f"labels ({labels[0]}, {labels[1]}) must be (1, 0), (0, 1) or (0.5, 0.5)", row=row, column="label_0"
        )
    images = []
    for column in ("jpg_0", "jpg_1"):
        data = cols[column][i]
        if not isinstance(data, bytes):
            raise ImportFormatError("image bytes are missing", row=row, column=column)
        what = f"row {row}, column {column!r}"
        try:
            images.append(media.inspect(data, what=what))
        except MediaError as e:
            raise ImportFormatError(str(e).removeprefix(f"{what}: "), row=row, column=column) from e
    if images[0].id == images[1].id:
        raise ImportFormatError("the same image as jpg_0: a pair needs two different images", row=row, column="jpg_1")
    optional = {}
    for column in _OPTIONAL:
        value = cols[column][i] if column in cols else None
        if value is not None:
            value = str(value)
            if column.endswith("_uid") or column == "ranking_id":
                if not _UID_RE.fullmatch(value) or ".." in value:
                    raise ImportFormatError(
                        f"{value[:40]!r} is not a plain identifier (at most 128 letters, digits, '.', '_', ':', '-'; "
                        "no '..' or '/')",
                        row=row,
                        column=column,
                    )
            elif len(value) > MAX_NAME_CHARS or not value.isprintable():
                raise ImportFormatError(
                    f"must be at most {MAX_NAME_CHARS} printable characters, got {len(value)} characters",
                    row=row,
                    column=column,
                )
        optional[column] = value
    return _Row(
        number=row,
        caption=caption.strip(),
        image_0=images[0],
        image_1=images[1],
        outcome=outcome,
        uid_0=optional["image_0_uid"],
        uid_1=optional["image_1_uid"],
        model_0=optional["model_0"],
        model_1=optional["model_1"],
        user=optional["user_id"],
        ranking=optional["ranking_id"] or f"{file_hash}:{row}",
    )


def import_pickapic(store: Store, path: Path | str, *, show_progress: bool = True) -> ImportReport:
    """Import a Pick-a-Pic-format Parquet file as pairs and judgments.

    Any file with the columns caption, jpg_0, jpg_1, label_0, label_1 works; image_0_uid,
    image_1_uid, model_0, model_1, user_id and ranking_id are used when present. Every row is
    checked before anything is written: a malformed file raises ImportFormatError naming the row
    and column, and the store and media folder are left unchanged. Checks: corrupt Parquet pages,
    text that is not UTF-8, captions up to :data:`MAX_CAPTION_CHARS`, ids and names up to their
    limits, two different images per row, each one whole still image under the media store's
    byte and pixel limits (see :func:`~datastore.media.inspect_image`). A row repeating an earlier
    row of the file or a judgment imported before (same ranking id, or same user and two images
    in either order, the same image preferred) is skipped and counted; one that contradicts it is
    an error. Importing the same file twice adds nothing. Each row becomes one judgment by the
    annotator ``pickapic:<user_id>``, of the store's pair of its two images when there is one
    (in either order: the labels follow the pair's order).
    """
    path = Path(path)
    rows, duplicates = _validate_file(path, store.media)
    total = len(rows) + duplicates
    with store.read() as con:
        rows = _not_imported_before(con, rows)
    if not rows:
        return ImportReport(rows=total, duplicates=total, pairs=0, judgments=0, images=0, annotators=0)

    # Second pass: the images are written only once the whole file is known to be good.
    by_number = {r.number: r for r in rows}
    written: set[str] = set()
    with tqdm(total=total, desc="images", unit="row", disable=not show_progress) as bar:
        for offset, batch in _iter_batches(path, ["jpg_0", "jpg_1"]):
            cols = batch.to_pydict()
            for i in range(batch.num_rows):
                row = by_number.get(offset + i)
                if row is None:  # a repeat
                    continue
                for column, record in (("jpg_0", row.image_0), ("jpg_1", row.image_1)):
                    if record.id not in written:
                        store.media.write_checked(record, cols[column][i], sync=False)
                        written.add(record.id)
            bar.update(batch.num_rows)
    os.sync()  # one flush for every file above, before any row refers to them

    with store.write() as con:
        # Checked again under the write lock: another import may have committed since the read.
        rows = _oriented(con, _not_imported_before(con, rows))
        before = {t: scalar(con, f"SELECT count(*) FROM {t}") for t in ("pairs", "images", "annotators")}
        prompt_ids = upsert_prompts(con, [r.caption for r in rows], source=f"import:{path.name}")
        insert_images(
            con,
            [ImageRow(r.image_0, source_uid=r.uid_0, source_model=r.model_0) for r in rows]
            + [ImageRow(r.image_1, source_uid=r.uid_1, source_model=r.model_1) for r in rows],
        )
        pair_ids = insert_pairs(
            con,
            [NewPair(prompt_ids[r.caption], r.image_0.id, r.image_1.id, source_ref=r.ranking) for r in rows],
        )
        annotators = {name: ensure_annotator(con, name, kind="human") for name in {r.annotator for r in rows}}
        insert_judgments(
            con,
            [
                NewJudgment(pair_id=pid, annotator_id=annotators[r.annotator], source="import", outcome=r.outcome,
                            external_id=r.ranking)
                for r, pid in zip(rows, pair_ids, strict=True)
            ],
        )
        after = {t: scalar(con, f"SELECT count(*) FROM {t}") for t in ("pairs", "images", "annotators")}
    return ImportReport(
        rows=total,
        duplicates=total - len(rows),
        pairs=after["pairs"] - before["pairs"],
        judgments=len(rows),
        images=after["images"] - before["images"],
        annotators=after["annotators"] - before["annotators"],
    )
