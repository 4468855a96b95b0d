"""What the Annotate and Noisy-steps pages share: who is annotating, and judging the queue's pairs."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from labeling.errors import AlreadyJudgedError, LabelingError
from labeling.queue import QueueConfig, QueueItem, answer_and_next, display_bytes, human_annotator, next_pair
from workbench.ui.state import sign_in_needed, signed_in, store

BUTTONS: tuple[tuple[str, str, str], ...] = (
    ("left", "Left", "1"),
    ("right", "Right", "2"),
    ("tie", "Tie", "3"),
    ("both_bad", "Both bad", "4"),
)
"""(side, label, keyboard shortcut) of the answer buttons."""


@st.cache_data(max_entries=4096, show_spinner=False)
def image_bytes(image_id: str, _path: str) -> bytes:
    """An image ready for the screen, decoded once per server; keyed by image id alone
    (an id is the hash of the file's bytes, so it never names other pixels)."""
    return display_bytes(store(), _path)


def queue_config() -> QueueConfig:
    """The queue policy of this home (``labeling.toml``, else the defaults)."""
    return QueueConfig.from_home(store().home)


def _choose_annotator(widget_key: str) -> None:
    name = st.session_state[widget_key]
    if not name:
        return
    try:
        st.session_state["annotator"] = (human_annotator(store(), name), name.strip())
    except LabelingError as e:
        st.session_state["annotator_error"] = str(e)
        return
    st.session_state.pop("annotator_error", None)
    for key in [k for k in st.session_state if str(k).startswith(("queue_", "skipped_"))]:
        del st.session_state[key]


def _forget_annotator() -> None:
    del st.session_state["annotator"]


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
    if "annotator" in st.session_state:
        annotator_id, name = st.session_state["annotator"]
        st.sidebar.markdown(f"Annotating as **{name}**")
        st.sidebar.button("Switch annotator", on_click=_forget_annotator)
        return annotator_id
    names = queue_config().annotators
    if names:
        st.selectbox(
            "Who is annotating?", names, index=None, key="annotator_pick", on_change=_choose_annotator, args=("annotator_pick",)
        )
    else:
        st.text_input(
            "Your name", key="annotator_typed", on_change=_choose_annotator, args=("annotator_typed",), placeholder="e.g. Ada"
        )
    if "annotator_error" in st.session_state:
        st.error(st.session_state["annotator_error"])
    return None


def _advance(kind: str, annotator_id: int) -> None:
    skipped = st.session_state.setdefault(f"skipped_{kind}", [])
    st.session_state[f"queue_{kind}"] = next_pair(
        store(), annotator_id, kinds=(kind,), config=queue_config(), exclude=tuple(skipped)
    )


def _answer(kind: str, annotator_id: int, pair_id: int, side: str) -> None:
    item, _ = st.session_state[f"queue_{kind}"]
    # A press that arrives after the pair changed belongs to a pair no longer on screen.
    if item is None or item.pair_id != pair_id:
        return
    skipped = st.session_state[f"skipped_{kind}"]
    if side == "skip":
        skipped.append(pair_id)
        _advance(kind, annotator_id)
        return
    try:
        st.session_state[f"queue_{kind}"] = answer_and_next(
            store(), item, annotator_id, side, kinds=(kind,), config=queue_config(), exclude=tuple(skipped)
        )
    except AlreadyJudgedError:
        _advance(kind, annotator_id)  # answered in another tab or session: move on


def _unskip(kind: str, annotator_id: int) -> None:
    st.session_state[f"skipped_{kind}"] = []
    _advance(kind, annotator_id)


def judge_queue(kind: str, annotator_id: int, context: Callable[[QueueItem], None] | None = None) -> QueueItem | None:
    """Render the annotator's current pair of ``kind`` with the answer buttons and progress.

    The answer is recorded and the next pair fetched in the button's callback, before the
    page runs again, so the next pair is on screen after a single run.

    Args:
        context: draws what a page adds about the pair, between the prompt and the images.

    Returns:
        The pair on screen, or None when the queue is empty for this annotator.
    """
    if f"queue_{kind}" not in st.session_state:
        _advance(kind, annotator_id)
    item, progress = st.session_state[f"queue_{kind}"]
    total = progress.done + progress.remaining
    st.progress(progress.done / total if total else 1.0, text=f"{progress.done} judged · {progress.remaining} to go")
    if item is None:
        skipped = st.session_state[f"skipped_{kind}"]
        if skipped:
            st.info(f"Only pairs you skipped are left ({len(skipped)}).")
            st.button("Show skipped pairs again", key=f"{kind}_unskip", on_click=_unskip, args=(kind, annotator_id))
        else:
            st.success("Nothing left to judge here. Thank you!")
        return None
    st.subheader(item.prompt, anchor=False)
    if context is not None:
        context(item)
    left, right = st.columns(2)
    left.image(image_bytes(*item.left), caption="1 · left", width="stretch")
    right.image(image_bytes(*item.right), caption="2 · right", width="stretch")
    cols = st.columns(len(BUTTONS) + 1)
    for col, (side, label, shortcut) in zip(cols, BUTTONS, strict=False):
        col.button(
            label,
            key=f"{kind}_{side}_{item.pair_id}",
            shortcut=shortcut,
            on_click=_answer,
            args=(kind, annotator_id, item.pair_id, side),
            width="stretch",
            type="primary" if side in ("left", "right") else "secondary",
        )
    cols[-1].button(
        "Skip",
        key=f"{kind}_skip_{item.pair_id}",
        on_click=_answer,
        args=(kind, annotator_id, item.pair_id, "skip"),
        width="stretch",
        type="tertiary",
    )
    st.caption(f"Pair `{item.pair_id}`")
    return item
