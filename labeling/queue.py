"""The annotation queue: which pair a person judges next, and how an answer becomes a judgment.

Policy, applied by one SQL statement per next pair (:func:`next_pair`):

- a pair is never offered twice to one annotator;
- a pair leaves the queue once ``overlap`` people judged it, and pairs with the fewest
  judgments come first; among equals each annotator gets an order of their own, so people
  working at the same time get different pairs;
- gold pairs (pairs with a known ``gold_outcome``) are mixed in at ``gold_rate``: a draw seeded
  by (seed, annotator, number of judgments so far) picks a gold pair or a plain one. Gold pairs
  are offered to every annotator whatever their overlap, since they measure each person.

Human judgments of every source count towards the overlap (the app, Label Studio, imports);
AI judgments do not. A pair already on someone's screen can still be answered after others
filled it, so a pair may end up with a judgment or two above the overlap.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb
from PIL import Image

from datastore.errors import DuplicateJudgmentError, StoreError
from datastore.media import encode_png
from datastore.records import PAIR_KINDS, NewJudgment, ensure_annotator
from datastore.sql import first_row, scalar
from datastore.store import Store
from labeling.errors import AlreadyJudgedError, LabelingError

Side = Literal["left", "right", "tie", "both_bad"]
SIDES: tuple[str, ...] = ("left", "right", "tie", "both_bad")

CONFIG_FILE = "labeling.toml"
"""Optional file in the workbench home holding :class:`QueueConfig`'s fields as top-level keys."""


@dataclass(frozen=True)
class QueueConfig:
    """How the annotation queue hands out pairs.

    Attributes:
        overlap: people who judge each plain pair before it leaves the queue (at least 1).
        gold_rate: share of gold pairs mixed into each annotator's queue, in [0, 1], while
            unseen gold pairs remain.
        seed: seeds the gold draw, the order among equally judged pairs and the side shown left.
        annotators: names offered on the Annotate page; empty lets people type their name.
    """

    overlap: int = 3
    gold_rate: float = 0.1
    seed: int = 0
    annotators: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.overlap < 1:
            raise LabelingError(f"overlap must be >= 1, got {self.overlap}")
        if not 0.0 <= self.gold_rate <= 1.0:
            raise LabelingError(f"gold_rate must be within [0, 1], got {self.gold_rate}")
        if any(not name.strip() for name in self.annotators):
            raise LabelingError("annotators holds an empty name")

    @classmethod
    def from_home(cls, home: Path | str) -> QueueConfig:
        """The config in ``<home>/labeling.toml``, or the defaults when there is no such file.

        Raises:
            LabelingError: the file is not TOML, has an unknown key, or a value out of range.
        """
        path = Path(home) / CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise LabelingError(f"{path} is not valid TOML: {e}") from e
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LabelingError(f"{path}: unknown keys {unknown}; expected some of {sorted(known)}")
        if "annotators" in values:
            names = values["annotators"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise LabelingError(f"{path}: annotators must be a list of names, got {names!r}")
            values["annotators"] = tuple(names)
        return cls(**values)


@dataclass(frozen=True)
class Progress:
    """Where an annotator stands in a queue.

    Attributes:
        done: pairs of the queue's kinds this annotator has judged.
        remaining: pairs still open to them (including the one on screen).
    """

    done: int
    remaining: int


@dataclass(frozen=True)
class QueueItem:
    """A pair as shown to one annotator.

    Attributes:
        pair_id, kind, prompt: the pair.
        image_a, image_b: image ids; path_a, path_b: their files, relative to the media folder.
        timestep, pool_id, step_index, num_steps: step pairs: the pool's state in its chain.
        gold_outcome: the known answer of a gold pair, else None.
        left_image: which image is shown on the left, ``a`` or ``b``.
        shown_at: when the pair was handed out (naive UTC).
    """

    pair_id: int
    kind: str
    prompt: str
    image_a: str
    image_b: str
    path_a: str
    path_b: str
    timestep: int | None
    pool_id: int | None
    step_index: int | None
    num_steps: int | None
    gold_outcome: str | None
    left_image: Literal["a", "b"]
    shown_at: datetime

    @property
    def left(self) -> tuple[str, str]:
        """(image id, path) of the image shown on the left."""
        return (self.image_a, self.path_a) if self.left_image == "a" else (self.image_b, self.path_b)

    @property
    def right(self) -> tuple[str, str]:
        """(image id, path) of the image shown on the right."""
        return (self.image_b, self.path_b) if self.left_image == "a" else (self.image_a, self.path_a)

    def outcome(self, side: Side) -> str:
        """The judgment's outcome (a / b / tie / both_bad) for the button the annotator pressed."""
        if side == "left":
            return self.left_image
        if side == "right":
            return "b" if self.left_image == "a" else "a"
        if side in ("tie", "both_bad"):
            return side
        raise LabelingError(f"side must be one of {SIDES}, got {side!r}")


def _unit(*parts: object) -> float:
    """A number in [0, 1) determined by ``parts``: reproducible across processes and versions."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_kinds(kinds: tuple[str, ...]) -> list[str]:
    """The kinds as a list, after checking each is a pair kind (final / step)."""
    if not kinds or any(k not in PAIR_KINDS for k in kinds):
        raise LabelingError(f"kinds must be a non-empty subset of {PAIR_KINDS}, got {kinds!r}")
    return list(kinds)


def now() -> datetime:
    """The current time as naive UTC, the way judgments store it."""
    return datetime.now(UTC).replace(tzinfo=None)


def human_annotator(store: Store, name: str) -> int:
    """The id of the person called ``name`` (spaces around it ignored), created if new.

    Raises:
        LabelingError: the name is empty, too long, or belongs to an AI annotator.
    """
    name = name.strip()
    if not name or len(name) > 100:
        raise LabelingError(f"an annotator name needs 1 to 100 characters, got {name!r}")
    with store.write() as con:
        kind = scalar(con, "SELECT kind FROM annotators WHERE name = ?", [name])
        if kind == "ai":
            raise LabelingError(f"{name!r} is an AI annotator; choose another name")
        return ensure_annotator(con, name, kind="human")


# Candidates for one annotator; shared by next_pair and progress. Parameters: $annotator,
# $kinds, $overlap.
_OPEN = """
    counts AS (
        SELECT pair_id, count(*) AS n, bool_or(annotator_id = $annotator) AS mine
        FROM judgments WHERE source <> 'ai' AND NOT withdrawn
        GROUP BY pair_id
    ),
    open AS (
        SELECT p.id, p.gold_outcome IS NOT NULL AS gold, coalesce(c.n, 0) AS n
        FROM pairs p LEFT JOIN counts c ON c.pair_id = p.id
        WHERE list_contains($kinds, p.kind) AND NOT coalesce(c.mine, false)
          AND (p.gold_outcome IS NOT NULL OR coalesce(c.n, 0) < $overlap)
    ),
    stats AS (
        SELECT (SELECT count(*) FROM open) AS remaining,
               (SELECT count(*) FROM judgments j JOIN pairs q ON q.id = j.pair_id
                WHERE j.annotator_id = $annotator AND NOT j.withdrawn AND list_contains($kinds, q.kind)) AS done
    )
"""

_NEXT = f"""
WITH {_OPEN},
    picked AS (
        SELECT gold, arg_min(id, (n, hash(id, $seed, $annotator))) AS id
        FROM open WHERE NOT list_contains($exclude, id)
        GROUP BY gold
    ),
    shown AS (
        SELECT picked.gold, p.id, p.kind, pr.text, p.image_a, p.image_b, ia.path AS path_a, ib.path AS path_b,
               p.timestep, p.pool_id, sp.step_index, sp.num_steps, p.gold_outcome
        FROM picked
        JOIN pairs p ON p.id = picked.id
        JOIN prompts pr ON pr.id = p.prompt_id
        JOIN images ia ON ia.id = p.image_a
        JOIN images ib ON ib.id = p.image_b
        LEFT JOIN step_pools sp ON sp.id = p.pool_id
    )
SELECT stats.remaining, stats.done, shown.* FROM stats LEFT JOIN shown ON true
"""


def next_pair(
    store: Store,
    annotator_id: int,
    *,
    kinds: tuple[str, ...] = ("final",),
    config: QueueConfig | None = None,
    exclude: tuple[int, ...] = (),
) -> tuple[QueueItem | None, Progress]:
    """The pair to show an annotator next, and their progress; one read, one statement.

    Args:
        annotator_id: the annotator (see :func:`human_annotator`).
        kinds: pair kinds to draw from: ``final``, ``step`` or both.
        config: the queue policy; defaults to ``QueueConfig()``.
        exclude: pair ids not to offer now (e.g. those skipped in this session).

    Returns:
        The item (None when nothing is left for this annotator) and the progress.
    """
    with store.read() as con:
        return _next(con, annotator_id, kinds, config or QueueConfig(), exclude)


def _next(
    con: duckdb.DuckDBPyConnection,
    annotator_id: int,
    kinds: tuple[str, ...],
    config: QueueConfig,
    exclude: tuple[int, ...],
) -> tuple[QueueItem | None, Progress]:
    params = {
        "annotator": annotator_id,
        "kinds": check_kinds(kinds),
        "overlap": config.overlap,
        "seed": config.seed,
        "exclude": list(exclude),
    }
    rows = con.execute(_NEXT, params).fetchall()
    remaining, done = rows[0][0], rows[0][1]
    candidates = {row[2]: row[3:] for row in rows if row[3] is not None}
    want_gold = _unit(config.seed, "gold", annotator_id, done) < config.gold_rate
    row = candidates.get(want_gold) or candidates.get(not want_gold)
    progress = Progress(done=done, remaining=remaining)
    if row is None:
        return None, progress
    pair_id = row[0]
    left = "a" if _unit(config.seed, "side", annotator_id, pair_id) < 0.5 else "b"
    return QueueItem(*row, left_image=left, shown_at=now()), progress


def progress(
    store: Store, annotator_id: int, *, kinds: tuple[str, ...] = ("final",), config: QueueConfig | None = None
) -> Progress:
    """Pairs of ``kinds`` the annotator has judged, and pairs still open to them."""
    config = config or QueueConfig()
    params = {"annotator": annotator_id, "kinds": check_kinds(kinds), "overlap": config.overlap}
    with store.read() as con:
        done, remaining = first_row(con, f"WITH {_OPEN} SELECT done, remaining FROM stats", params)
    return Progress(done=done, remaining=remaining)


def record_answer(
    store: Store, item: QueueItem, annotator_id: int, side: Side, *, answered_at: datetime | None = None
) -> None:
    """Record an annotator's answer to a shown pair as a judgment (source ``app``).

    The judgment goes through the store's inbox: it is on disk when this returns (a few ms, no
    DuckDB open) and every read of the store from then on sees it.

    Args:
        item: the pair as shown (its ``left_image`` turns the side into an outcome).
        side: the button pressed: ``left``, ``right``, ``tie`` or ``both_bad``.
        answered_at: when the answer was given; now by default.

    Raises:
        AlreadyJudgedError: the annotator already answered this pair; nothing is written.
    """
    judgment = NewJudgment(
        pair_id=item.pair_id,
        annotator_id=annotator_id,
        source="app",
        outcome=item.outcome(side),
        left_image=item.left_image,
        shown_at=item.shown_at,
        answered_at=answered_at or now(),
        is_gold=item.gold_outcome is not None,
    )
    try:
        store.record_judgment(judgment)
    except DuplicateJudgmentError as e:
        raise AlreadyJudgedError(str(e)) from e


def answer_and_next(
    store: Store,
    item: QueueItem,
    annotator_id: int,
    side: Side,
    *,
    kinds: tuple[str, ...] = ("final",),
    config: QueueConfig | None = None,
    exclude: tuple[int, ...] = (),
) -> tuple[QueueItem | None, Progress]:
    """:func:`record_answer` then :func:`next_pair`, whose read applies the answer to the store first.

    Raises:
        AlreadyJudgedError: the annotator already answered this pair; nothing is written.
    """
    record_answer(store, item, annotator_id, side)
    return next_pair(store, annotator_id, kinds=kinds, config=config, exclude=exclude)


@dataclass(frozen=True)
class GoldAccuracy:
    """How often one annotator matched the known answer of gold pairs.

    Attributes:
        annotator, kind: the annotator's name and kind (human / ai).
        judged: gold pairs judged; correct: judgments equal to the gold outcome.
    """

    annotator: str
    kind: str
    judged: int
    correct: int

    @property
    def accuracy(self) -> float:
        """correct / judged."""
        return self.correct / self.judged


def gold_accuracy(store: Store) -> list[GoldAccuracy]:
    """Per-annotator accuracy on gold pairs (every source, withdrawn judgments left out), by name."""
    with store.read() as con:
        rows = con.execute(
            "SELECT a.name, a.kind, count(*), count(*) FILTER (WHERE j.outcome = p.gold_outcome) "
            "FROM judgments j JOIN pairs p ON p.id = j.pair_id JOIN annotators a ON a.id = j.annotator_id "
            "WHERE p.gold_outcome IS NOT NULL AND NOT j.withdrawn GROUP BY a.name, a.kind ORDER BY a.name"
        ).fetchall()
    return [GoldAccuracy(*row) for row in rows]


def pool_candidates(store: Store, pool_id: int) -> list[tuple[str, str]]:
    """(image id, path) of every candidate image of a step pool, in the order they were stored."""
    with store.read() as con:
        return con.execute(
            "SELECT id, path FROM images WHERE pool_id = ? ORDER BY created_at, id", [pool_id]
        ).fetchall()


def display_bytes(store: Store, path: str, *, min_side: int = 512) -> bytes:
    """A stored image's bytes for the screen.

    Images smaller than ``min_side`` are enlarged by a whole factor with nearest-neighbour
    sampling (and PNG-encoded), so tiny images stay sharp instead of blurring in the browser;
    larger ones are returned as stored.

    Raises:
        StoreError: the file is missing, unreadable, or outside the media folder.
    """
    try:
        image = store.media.open_image(path)
        factor = max(1, min_side // max(image.size))
        if factor == 1:
            return store.media.read_bytes(path)
    except OSError as e:
        raise StoreError(f"cannot read image file {path!r}: {e}") from e
    return encode_png(image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST))
