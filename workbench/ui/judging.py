"""What the Annotate and Noisy-steps pages share: who is annotating, and the judging widget.

The widget (``judge_widget/``: plain HTML, CSS and JavaScript shipped in the package, a Streamlit
custom component) holds the next pairs with their images and owns the keyboard: a key press
shows the next pair at once, and the answer goes to the server in the background with the pair
that was on screen and an idempotency key. Each message from the widget reruns only the widget's
fragment, which records the answers and undos (`labeling.answers`) of pairs handed to that
annotator, tops the browser's queue up to ``prefetch`` leased pairs once it is down to
``refill_at`` (or when the widget asks), and acknowledges the keys it handled; the widget resends what is not acknowledged.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import streamlit as st
import streamlit.components.v1 as components

from datastore.errors import NotFoundError, StoreError
from datastore.records import PREVIEW_KINDS
from labeling.answers import SIDES, Answer, record_answers, withdraw_answer
from labeling.errors import LabelingError
from labeling.queue import Progress, QueueConfig, QueueItem, handed, human_annotator, next_pairs
from workbench.ui.state import sign_in_needed, signed_in, store

_WIDGET = components.declare_component("judge", path=str(Path(__file__).parent / "judge_widget"))
_MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
_KEY = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class View:
    """One image of a side in the widget: a side's first view is shown large, the others small
    beside it, each with its caption (e.g. a step pool's completion large, its predicted x0 small)."""

    image_id: str
    path: str
    caption: str = ""


class Sides(NamedTuple):
    """What a page shows of a pair: the views of its left side and of its right side, and what
    they show (None: the pair's own images; ``completion``: the candidates' completion previews),
    recorded with the judgment."""

    left: list[View]
    right: list[View]
    preview: str | None = None


Views = Callable[[list[QueueItem]], list[Sides]]
"""What a page shows of the pairs of one draw, one ``Sides`` per pair in order: called once per
draw, so a page reads what it needs for all of them at once."""

Context = Callable[[QueueItem, Sides], str]
"""A line of text about a pair, shown under its prompt, from the pair and what its page shows of it."""


def pair_views(items: list[QueueItem]) -> list[Sides]:
    """The default views: each side is its image."""
    return [Sides([View(*item.left)], [View(*item.right)]) for item in items]


@st.cache_data(max_entries=4096, show_spinner=False)
def image_url(image_id: str, _path: str) -> str:
    """A stored image as a data URL, read once per server; keyed by image id alone (an id is the
    hash of the file's bytes, so it never names other pixels). Small images are enlarged by the
    browser without smoothing."""
    data = store().media.read_bytes(_path)
    return f"data:{_MIME[_path.rsplit('.', 1)[-1]]};base64,{base64.b64encode(data).decode()}"


def queue_config() -> QueueConfig:
    """The queue policy of this home (``labeling.toml``, else the defaults)."""
    return QueueConfig.from_home(store().home)


def _choose_annotator(name: str) -> None:
    try:
        st.session_state["annotator"] = (human_annotator(store(), name), name.strip())
    except LabelingError as e:
        st.session_state["annotator_error"] = str(e)
        return
    # In the address too, so that a reconnect to a restarted server keeps the annotator.
    st.query_params["annotator"] = name.strip()
    st.session_state.pop("annotator_error", None)
    for key in [k for k in st.session_state if str(k).startswith("queue_")]:
        del st.session_state[key]


def _chosen(widget_key: str) -> None:
    if st.session_state[widget_key]:
        _choose_annotator(st.session_state[widget_key])


def _forget_annotator() -> None:
    del st.session_state["annotator"]
    st.query_params.pop("annotator", None)


def annotator() -> int | None:
    """The id of the person annotating in this session: the signed-in person's annotator, else
    (the local single user, sign-in not required) asks for a name once.

    Returns:
        The annotator id, or None while nobody has been given (the question is on screen).
    """
    user = signed_in()
    if user is not None:
        st.sidebar.markdown(f"Annotating as **{user.name}**")
        return user.annotator_id
    if sign_in_needed():
        st.error("Sign in to annotate.")
        st.stop()
    if "annotator" not in st.session_state and st.query_params.get("annotator"):
        _choose_annotator(st.query_params["annotator"])
    if "annotator" in st.session_state:
        annotator_id, name = st.session_state["annotator"]
        st.sidebar.markdown(f"Annotating as **{name}**")
        st.sidebar.button("Switch annotator", on_click=_forget_annotator)
        return annotator_id
    names = queue_config().annotators
    if names:
        st.selectbox(
            "Who is annotating?", names, index=None, key="annotator_pick", on_change=_chosen, args=("annotator_pick",)
        )
    else:
        st.text_input(
            "Your name", key="annotator_typed", on_change=_chosen, args=("annotator_typed",), placeholder="e.g. Ada"
        )
    if "annotator_error" in st.session_state:
        st.error(st.session_state["annotator_error"])
    return None



@dataclass
class _Session:
    """The server's side of one widget in one browser session.

    Attributes:
        handed: payloads of the pairs handed to the browser and not yet answered or skipped.
        paths: media path of each image of those payloads.
        handled: idempotency keys of the messages handled (acknowledged in every render).
        last: the widget's last message; seen_seq its number.
    """

    handed: dict[int, dict] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    handled: set[str] = field(default_factory=set)
    last: dict = field(default_factory=dict)
    seen_seq: int = 0
    progress: Progress = Progress(done=0, remaining=0)
    exhausted: bool = False
    error: str | None = None


def _session(kind: str) -> _Session:
    return st.session_state.setdefault(f"queue_{kind}", _Session())


def _time(value: Any, name: str) -> datetime:
    try:
        return datetime.fromisoformat(value).astimezone(UTC).replace(tzinfo=None)
    except (TypeError, ValueError):
        raise LabelingError(f"{name} must be an ISO time, got {value!r}") from None


def _answer(message: dict) -> Answer:
    """The answer of a widget message, checked field by field."""
    pair = message.get("pair")
    if not isinstance(pair, int) or not 0 < pair < 2**63 or message.get("side") not in SIDES:
        raise LabelingError(f"an answer needs a pair id and a side of {SIDES}, got {message!r}")
    if message.get("preview") not in (None, *PREVIEW_KINDS):
        raise LabelingError(f"an answer's preview must be one of {PREVIEW_KINDS} or null, got {message['preview']!r}")
    return Answer(
        key=message["key"],
        pair_id=message["pair"],
        side=message["side"],
        left_image=message.get("left_image"),
        is_gold=message.get("gold") is True,
        shown_at=_time(message.get("shown_at"), "shown_at"),
        answered_at=_time(message.get("answered_at"), "answered_at"),
        preview=message.get("preview"),
    )


def _numbered(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("seq"), int)


def _receive(kind: str, annotator_id: int, value: Any) -> None:
    """Handle a widget message: its answers and undos in order, each once per key."""
    session = _session(kind)
    if not _numbered(value):
        return
    session.seen_seq = value["seq"]
    if value.get("annotator") != annotator_id:
        return  # a message of the person this widget showed before
    session.last, session.error = value, None
    for message in value.get("outbox", []):
        key = message.get("key") if isinstance(message, dict) else None
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            session.error = f"a widget message without a valid key was dropped: {message!r}"
            continue
        if key in session.handled:
            continue
        try:
            if message.get("type") == "answer":
                answer = _answer(message)
                payload = session.handed.get(answer.pair_id)
                # Not handed in this session (a server restart, an undone pair): the leases tell.
                if payload is None and not handed(store(), annotator_id, answer.pair_id):
                    raise LabelingError(f"pair {answer.pair_id} was never handed to this annotator")
                if payload is not None and payload["preview"] != answer.preview:
                    raise LabelingError(
                        f"pair {answer.pair_id} was handed out with preview {payload['preview']!r}, "
                        f"answered as seen on {answer.preview!r}"
                    )
                status = record_answers(store(), annotator_id, [answer])[0]
                session.handed.pop(answer.pair_id, None)
                if status == "saved":
                    session.progress = Progress(session.progress.done + 1, max(0, session.progress.remaining - 1))
            elif message.get("type") == "undo":
                if withdraw_answer(store(), annotator_id, str(message.get("target"))) is not None:
                    session.progress = Progress(max(0, session.progress.done - 1), session.progress.remaining + 1)
            else:
                raise LabelingError(f"unknown widget message type {message.get('type')!r}")
        except (LabelingError, NotFoundError) as e:
            session.error = f"a malformed judgment was dropped: {e}"
        except StoreError as e:
            session.error = f"judgments wait in the browser and will be resent: {e}"
            return  # this one and the rest stay unacknowledged
        session.handled.add(key)


def _payload(item: QueueItem, sides: Sides, context: Context | None) -> tuple[dict, dict]:
    """A pair as the widget gets it, and the media paths of its images."""
    payload = {
        "id": item.pair_id,
        "prompt": item.prompt,
        "context": context(item, sides) if context else "",
        "left_image": item.left_image,
        "gold": item.gold_outcome is not None,
        "preview": sides.preview,
        "sides": [[{"image": v.image_id, "caption": v.caption} for v in side] for side in (sides.left, sides.right)],
    }
    return payload, {v.image_id: v.path for side in (sides.left, sides.right) for v in side}


def _top_up(kind: str, annotator_id: int, views: Views, context: Context | None) -> None:
    """Hand the browser new pairs up to the queue size (and draw the first ones)."""
    session, config = _session(kind), queue_config()
    value = session.last
    skipped = [int(p) for p in value.get("skipped", []) if isinstance(p, int)]
    for pair_id in skipped:
        session.handed.pop(pair_id, None)
    holding = {int(p) for p in value.get("held", []) if isinstance(p, int)} | set(session.handed)
    need = config.prefetch - len(holding)
    asked = not session.seen_seq or value.get("poll") or value.get("unskip")
    # Refill from refill_at pairs left, or on the widget's ask: few draws
    # (each is a store write) that start before the browser runs dry.
    low = len(holding) <= config.refill_at or value.get("more")
    if need <= 0 or (session.exhausted and not asked) or not (low or asked):
        return
    try:
        items, session.progress = next_pairs(
            store(), annotator_id, need, kinds=(kind,), config=config, held=tuple(holding), exclude=tuple(skipped)
        )
    except StoreError as e:
        session.error = f"no new pairs for now: {e}"
        return
    session.exhausted = len(items) < need
    for item, sides in zip(items, views(items) if items else [], strict=True):
        session.handed[item.pair_id], paths = _payload(item, sides, context)
        session.paths.update(paths)


@st.fragment
def _widget(kind: str, annotator_id: int, views: Views, context: Context | None) -> None:
    if not _still_annotating(annotator_id):  # a fragment's reruns skip the page's sign-in check
        st.error("Sign in to annotate.")
        st.stop()
    session = _session(kind)
    if not session.seen_seq and not session.handed:
        _top_up(kind, annotator_id, views, context)
    held = set(session.last.get("held", []))
    pairs = list(session.handed.values())
    images = {
        view["image"]: image_url(view["image"], session.paths[view["image"]])
        for pair in pairs
        if pair["id"] not in held
        for side in pair["sides"]
        for view in side
    }
    acked = [m["key"] for m in session.last.get("outbox", []) if isinstance(m, dict) and m.get("key") in session.handled]
    widget_key, config = f"queue_{kind}_widget", queue_config()
    value = _WIDGET(
        key=widget_key,
        default=None,
        on_change=partial(_on_message, kind, annotator_id, views, context),
        annotator=annotator_id,
        storage_key=hashlib.sha256(str(store().home).encode()).hexdigest()[:12] + f":{kind}",
        prefetch=config.prefetch,
        refill_at=config.refill_at,
        pairs=pairs,
        images=images,
        acked=acked,
        seen_seq=session.seen_seq,
        progress={"done": session.progress.done, "remaining": session.progress.remaining},
        exhausted=session.exhausted,
        error=session.error,
    )
    if session.error:
        st.warning(session.error)
    # The first run of a new server session (after a restart) has no callback yet for the message
    # the browser sent it: handle it here and draw again.
    if _numbered(value) and value["seq"] > session.seen_seq:
        _on_message(kind, annotator_id, views, context, value)
        st.rerun()


def _still_annotating(annotator_id: int) -> bool:
    """Whether this session may still judge as ``annotator_id``: its sign-in, read again from the
    users file (a removed person is signed out), names that annotator; or, sign-in not asked, the
    name given in this session does."""
    user = signed_in()
    if user is not None:
        return user.annotator_id == annotator_id
    chosen = st.session_state.get("annotator")
    return not sign_in_needed() and chosen is not None and chosen[0] == annotator_id


def _on_message(
    kind: str, annotator_id: int, views: Views, context: Context | None, value: Any = None
) -> None:
    # A callback runs before the page's own checks: refuse the answers of a person signed out since.
    if not _still_annotating(annotator_id):
        return
    _receive(kind, annotator_id, st.session_state[f"queue_{kind}_widget"] if value is None else value)
    _top_up(kind, annotator_id, views, context)


def judge_queue(
    kind: str, annotator_id: int, *, views: Views = pair_views, context: Context | None = None
) -> None:
    """The judging widget on the annotator's queue of ``kind`` pairs.

    Args:
        views: the images each side of each pair shows (default: its image); a page passes larger
            previews here.
        context: a line of text about the pair, shown under its prompt.
    """
    _widget(kind, annotator_id, views, context)
