"""Answers: the side a person picked, the outcome it means, and how it becomes a judgment.

Sides are what is on screen (``left``, ``right``, ``tie``, ``both_bad``); outcomes are what the
store records (``a``, ``b``, ``tie``, ``both_bad``); the image shown left links the two.

Answers from the browser (:class:`Answer`) carry an idempotency key made at the key press: a
resend of the same answer is ignored quietly, and :func:`withdraw_answer` takes one back by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from datastore.errors import DuplicateJudgmentError
from datastore.records import NewJudgment, Outcome
from datastore.sql import scalar
from datastore.store import Store
from labeling.errors import LabelingError

Side = Literal["left", "right", "tie", "both_bad"]
SIDES: tuple[str, ...] = ("left", "right", "tie", "both_bad")


def outcome(side: str, left_image: str) -> str:
    """The judgment's outcome (a / b / tie / both_bad) for the side pressed, given the image shown left."""
    if left_image not in ("a", "b"):
        raise LabelingError(f"left_image must be 'a' or 'b', got {left_image!r}")
    if side == "left":
        return left_image
    if side == "right":
        return "b" if left_image == "a" else "a"
    if side in ("tie", "both_bad"):
        return side
    raise LabelingError(f"side must be one of {SIDES}, got {side!r}")


def side_of(outcome: Outcome, left_image: Literal["a", "b"]) -> Side:
    """Where an outcome is on screen when ``left_image`` is shown left."""
    if outcome in ("tie", "both_bad"):
        return outcome
    return "left" if outcome == left_image else "right"


def now() -> datetime:
    """The current time as naive UTC, the way judgments store it."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Answer:
    """One answer as a browser reports it.

    Attributes:
        key: the idempotency key the browser made at the key press (None: no resends expected).
        pair_id: the pair that was on screen; left_image: the image it showed left, ``a`` or ``b``.
        side: the key's meaning: ``left``, ``right``, ``tie`` or ``both_bad``.
        is_gold: whether the pair was handed out as a gold pair.
        shown_at, answered_at: the browser's times of display and key press (naive UTC).
        preview: what the pair was judged on: None = its own images, ``completion`` = the
            completion previews of a step pair's candidates (see :func:`labeling.queue.completion_previews`).
    """

    key: str | None
    pair_id: int
    side: str
    left_image: str
    is_gold: bool
    shown_at: datetime
    answered_at: datetime
    preview: str | None = None

    def judgment(self, annotator_id: int) -> NewJudgment:
        """The judgment this answer records (source ``app``).

        Raises:
            LabelingError: the side or the left image is not one of theirs.
        """
        return NewJudgment(
            pair_id=self.pair_id,
            annotator_id=annotator_id,
            source="app",
            outcome=outcome(self.side, self.left_image),
            left_image=self.left_image,
            shown_at=self.shown_at,
            answered_at=self.answered_at,
            is_gold=self.is_gold,
            idempotency_key=self.key,
            preview=self.preview,
        )


AnswerStatus = Literal["saved", "resent", "already_judged"]


def record_answers(store: Store, annotator_id: int, answers: list[Answer]) -> list[AnswerStatus]:
    """Record a browser's answers in order, each through the inbox (a few ms each).

    Returns:
        Per answer: ``saved``; ``resent`` when its key was accepted before (nothing written);
        ``already_judged`` when the annotator answered that pair before under another key
        (another tab: nothing written).

    Raises:
        LabelingError / StoreError: a malformed answer; the answers before it are recorded.
    """
    statuses: list[AnswerStatus] = []
    for answer in answers:
        try:
            statuses.append("saved" if store.record_judgment(answer.judgment(annotator_id)) else "resent")
        except DuplicateJudgmentError:
            statuses.append("already_judged")
    return statuses


def withdraw_answer(store: Store, annotator_id: int, key: str) -> int | None:
    """Take back the annotator's app judgment recorded under ``key`` (kept, marked withdrawn), so the
    pair is open to them again. Doing it twice is harmless.

    Returns:
        The pair of the judgment, or None when no judgment has that key (it was refused).
    """
    with store.write() as con:
        pair_id = scalar(
            con,
            "UPDATE judgments SET withdrawn = true, updated_at = ? "
            "WHERE annotator_id = ? AND idempotency_key = ? AND source = 'app' RETURNING pair_id",
            [now(), annotator_id, key],
        )
    if pair_id is not None:
        store.inbox.withdraw(pair_id, annotator_id)
    return pair_id
