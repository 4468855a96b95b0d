"""The annotation queue: which pair a person judges next, leased to their browser.

Policy, applied by one SQL statement per request for pairs (:func:`next_pairs`):

- a pair is never offered twice to one annotator;
- a pair leaves the queue once ``overlap`` people judged it, and pairs with the fewest
  judgments come first; among equals each annotator gets an order of their own, so people
  working at the same time get different pairs;
- gold pairs (pairs with a known ``gold_outcome``) are mixed in at ``gold_rate``: a draw seeded
  by (seed, annotator, number of judgments so far) picks a gold pair or a plain one. Gold pairs
  are offered to every annotator whatever their overlap, since they measure each person.

Human judgments of every source count towards the overlap (the app, Label Studio, imports);
AI judgments do not. :func:`next_pairs` hands a browser one or several pairs at once and leases them to
that annotator for ``lease_s``: an unexpired lease counts towards the overlap like a judgment, so
two people working at once are not handed the same last pairs beyond it. A lease's row outlives
its expiry until its annotator judges the pair, so :func:`handed` can tell the pairs ever handed
to an annotator (the only ones their browser may answer) after a server restart too.

An answer to a shown pair becomes a judgment through :mod:`labeling.answers` (:func:`record_answers`).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import duckdb

from datastore.records import PAIR_KINDS, ensure_annotator
from datastore.sql import first_row, scalar
from datastore.store import Store
from labeling.answers import Side, now, outcome
from labeling.errors import LabelingError

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
        prefetch: pairs a browser holds ready, so the next one shows at the key press (at least 1);
            it asks for more once it holds :attr:`refill_at` or fewer.
        lease_s: seconds a pair handed to a browser stays reserved for that annotator (> 0).
    """

    overlap: int = 3
    gold_rate: float = 0.1
    seed: int = 0
    annotators: tuple[str, ...] = ()
    prefetch: int = 5
    lease_s: float = 120.0

    def __post_init__(self) -> None:
        if self.overlap < 1:
            raise LabelingError(f"overlap must be >= 1, got {self.overlap}")
        if not 0.0 <= self.gold_rate <= 1.0:
            raise LabelingError(f"gold_rate must be within [0, 1], got {self.gold_rate}")
        if any(not name.strip() for name in self.annotators):
            raise LabelingError("annotators holds an empty name")
        if self.prefetch < 1:
            raise LabelingError(f"prefetch must be >= 1, got {self.prefetch}")
        if not self.lease_s > 0:
            raise LabelingError(f"lease_s must be > 0, got {self.lease_s}")

    @property
    def refill_at(self) -> int:
        """Pairs left in a browser at which it asks for more: half of ``prefetch``, rounded down (2 of
        5). Each draw is one store write whatever its size, so a draw should bring several pairs."""
        return self.prefetch // 2

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
        return outcome(side, self.left_image)


def _unit(*parts: object) -> float:
    """A number in [0, 1) determined by ``parts``: reproducible across processes and versions."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_kinds(kinds: tuple[str, ...]) -> list[str]:
    """The kinds as a list, after checking each is a pair kind (final / step)."""
    if not kinds or any(k not in PAIR_KINDS for k in kinds):
        raise LabelingError(f"kinds must be a non-empty subset of {PAIR_KINDS}, got {kinds!r}")
    return list(kinds)


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


# Candidates for one annotator; shared by next_pairs and progress. Parameters: $annotator,
# $kinds, $overlap, $now. A lease of another annotator who has not answered yet counts as a judgment.
_OPEN = """
    counts AS (
        SELECT pair_id, count(*) AS n, bool_or(annotator_id = $annotator) AS mine
        FROM judgments WHERE source <> 'ai' AND NOT withdrawn
        GROUP BY pair_id
    ),
    leased AS (
        SELECT l.pair_id, count(*) AS n FROM pair_leases l
        WHERE l.expires_at > $now AND l.annotator_id <> $annotator AND NOT EXISTS (
            SELECT 1 FROM judgments j
            WHERE j.pair_id = l.pair_id AND j.annotator_id = l.annotator_id AND NOT j.withdrawn)
        GROUP BY l.pair_id
    ),
    open AS (
        SELECT p.id, p.gold_outcome IS NOT NULL AS gold, coalesce(c.n, 0) AS n
        FROM pairs p LEFT JOIN counts c ON c.pair_id = p.id LEFT JOIN leased l ON l.pair_id = p.id
        WHERE list_contains($kinds, p.kind) AND NOT coalesce(c.mine, false)
          AND (p.gold_outcome IS NOT NULL OR coalesce(c.n, 0) + coalesce(l.n, 0) < $overlap)
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
        (SELECT gold, id, n, hash(id, $seed, $annotator) AS h FROM open
         WHERE gold AND NOT list_contains($exclude, id) ORDER BY n, h LIMIT $limit)
        UNION ALL
        (SELECT gold, id, n, hash(id, $seed, $annotator) AS h FROM open
         WHERE NOT gold AND NOT list_contains($exclude, id) ORDER BY n, h LIMIT $limit)
    ),
    shown AS (
        SELECT picked.gold, picked.n AS rank_n, picked.h AS rank_h, p.id, p.kind, p.prompt AS text, p.image_a,
               p.image_b, p.path_a, p.path_b, p.timestep, p.pool_id, sp.step_index, sp.num_steps, p.gold_outcome
        FROM picked
        JOIN pair_media p ON p.id = picked.id
        LEFT JOIN step_pools sp ON sp.id = p.pool_id
    )
SELECT stats.remaining, stats.done, shown.* FROM stats LEFT JOIN shown ON true
"""


def next_pairs(
    store: Store,
    annotator_id: int,
    n: int,
    *,
    kinds: tuple[str, ...] = ("final",),
    config: QueueConfig | None = None,
    held: tuple[int, ...] = (),
    exclude: tuple[int, ...] = (),
) -> tuple[list[QueueItem], Progress]:
    """Up to ``n`` pairs for an annotator's browser, leased to them for ``config.lease_s``.

    One write: expired leases of pairs their annotator has judged go, and the annotator's leases of
    ``exclude`` expire; the pairs are drawn as requests for one pair would draw them one after the
    other (gold draws included), and their leases and those of ``held`` are renewed.

    Args:
        held: pairs the browser already holds: not handed again, their leases renewed.
        exclude: pair ids not to offer now (e.g. those skipped in this session): not handed, and
            no longer reserved for this annotator.

    Returns:
        The items in the order to show them, and the progress before any of them is answered.
    """
    config = config or QueueConfig()
    if n < 0:
        raise LabelingError(f"n must be >= 0, got {n}")
    when = now()
    with store.write() as con:
        # An expired lease's row stays until the pair is judged by its annotator: it tells handed().
        con.execute(
            "DELETE FROM pair_leases l WHERE expires_at <= ? AND EXISTS ("
            "SELECT 1 FROM judgments j WHERE j.pair_id = l.pair_id AND j.annotator_id = l.annotator_id)",
            [when],
        )
        con.execute(
            "UPDATE pair_leases SET expires_at = ? WHERE annotator_id = ? AND list_contains(?, pair_id) "
            "AND expires_at > ?",
            [when, annotator_id, list(exclude), when],
        )
        items, progress_now = _next(con, annotator_id, kinds, config, (*held, *exclude), n, when)
        leased = [item.pair_id for item in items] + list(held)
        if leased:
            con.executemany(
                "INSERT OR REPLACE INTO pair_leases (pair_id, annotator_id, expires_at) VALUES (?, ?, ?)",
                [[pair_id, annotator_id, when + timedelta(seconds=config.lease_s)] for pair_id in leased],
            )
    return items, progress_now


def handed(store: Store, annotator_id: int, pair_id: int) -> bool:
    """Whether the pair was ever handed to the annotator's browser: they hold or held a lease of
    it (an expired one included) or have judged it (a judged pair's expired lease goes)."""
    with store.read() as con:
        return bool(
            scalar(
                con,
                "SELECT EXISTS (SELECT 1 FROM pair_leases WHERE pair_id = ? AND annotator_id = ?) "
                "OR EXISTS (SELECT 1 FROM judgments WHERE pair_id = ? AND annotator_id = ?)",
                [pair_id, annotator_id] * 2,
            )
        )


def _next(
    con: duckdb.DuckDBPyConnection,
    annotator_id: int,
    kinds: tuple[str, ...],
    config: QueueConfig,
    exclude: tuple[int, ...],
    n: int,
    when: datetime | None = None,
) -> tuple[list[QueueItem], Progress]:
    params = {
        "annotator": annotator_id,
        "kinds": check_kinds(kinds),
        "overlap": config.overlap,
        "seed": config.seed,
        "exclude": list(exclude),
        "limit": n,
        "now": when or now(),
    }
    rows = con.execute(_NEXT, params).fetchall()
    remaining, done = rows[0][0], rows[0][1]
    progress_now = Progress(done=done, remaining=remaining)
    ranked = sorted((row for row in rows if row[3] is not None), key=lambda row: (row[3], row[4]))
    candidates = {gold: [row[5:] for row in ranked if row[2] == gold] for gold in (True, False)}
    items = []
    for i in range(n):
        want_gold = _unit(config.seed, "gold", annotator_id, done + i) < config.gold_rate
        pool = candidates[want_gold] or candidates[not want_gold]
        if not pool:
            break
        row = pool.pop(0)
        left = "a" if _unit(config.seed, "side", annotator_id, row[0]) < 0.5 else "b"
        items.append(QueueItem(*row, left_image=left, shown_at=now()))
    return items, progress_now


def progress(
    store: Store, annotator_id: int, *, kinds: tuple[str, ...] = ("final",), config: QueueConfig | None = None
) -> Progress:
    """Pairs of ``kinds`` the annotator has judged, and pairs still open to them."""
    config = config or QueueConfig()
    params = {"annotator": annotator_id, "kinds": check_kinds(kinds), "overlap": config.overlap, "now": now()}
    with store.read() as con:
        done, remaining = first_row(con, f"WITH {_OPEN} SELECT done, remaining FROM stats", params)
    return Progress(done=done, remaining=remaining)


def completion_previews(store: Store, image_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The completion previews of the given images (step-pool candidates): image id -> (preview
    image id, its file relative to the media folder); images without one are left out."""
    with store.read() as con:
        rows = con.execute(
            "SELECT v.image_id, v.preview_id, i.path FROM image_previews v JOIN images i ON i.id = v.preview_id "
            "WHERE v.kind = 'completion' AND list_contains(?, v.image_id)",
            [list(image_ids)],
        ).fetchall()
    return {image_id: (preview_id, path) for image_id, preview_id, path in rows}


def step_pairs_have_previews(store: Store) -> bool:
    """Whether some step pair has a completion preview for both of its candidates."""
    with store.read() as con:
        return bool(
            scalar(
                con,
                "SELECT EXISTS (SELECT 1 FROM pairs p "
                "JOIN image_previews va ON va.image_id = p.image_a AND va.kind = 'completion' "
                "JOIN image_previews vb ON vb.image_id = p.image_b AND vb.kind = 'completion' WHERE p.kind = 'step')",
            )
        )


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
