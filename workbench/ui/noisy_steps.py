"""Noisy steps: judge candidates of a step pool, each shown as the finished image its continuation
leads to (its completion preview) when it has one, with its predicted final image (x0) beside it;
a pair without previews says it is meant for scorers."""

import streamlit as st

from labeling.queue import QueueItem, completion_previews, step_pairs_have_previews
from workbench.ui.judging import Sides, View, annotator, judge_queue
from workbench.ui.state import store

COMPLETION = "finished image this continuation leads to"
X0 = "predicted x0 at this step"
FOR_SCORERS = "no completion previews: this pair is meant for scorers"


def _position(item: QueueItem) -> str:
    if item.step_index is None:
        return f"Timestep t = {item.timestep}"
    return f"Step {item.step_index} of {item.num_steps} of the denoising chain · timestep t = {item.timestep}"


def _context(item: QueueItem, sides: Sides) -> str:
    """The pair's position in its chain, and whether it is meant for scorers (no completion previews)."""
    return _position(item) if sides.preview == "completion" else f"{_position(item)} · {FOR_SCORERS}"


def _views(items: list[QueueItem]) -> list[Sides]:
    previews = completion_previews(store(), [image for item in items for image in (item.image_a, item.image_b)])
    return [_sides(item, previews) for item in items]


def _sides(item: QueueItem, previews: dict[str, tuple[str, str]]) -> Sides:
    if item.image_a not in previews or item.image_b not in previews:
        bare = f"{X0} (no completion preview)"
        return Sides([View(*item.left, bare)], [View(*item.right, bare)])
    left, right = (
        # At the chain's last step a candidate is finished: it is its own completion.
        [View(*previews[image], COMPLETION)] + ([View(image, path, X0)] if previews[image][0] != image else [])
        for image, path in (item.left, item.right)
    )
    return Sides(left, right, "completion")


st.title("Noisy steps")
st.caption(
    "Each candidate is one continuation of the same noisy state. Pick the continuation that leads to "
    "the better image for the prompt."
)
if not step_pairs_have_previews(store()):
    st.info(
        "These step pairs have no completion previews, so each side shows only the model's predicted x0 at "
        "the step, which is hard to judge by eye: such pairs are meant for scorers. Generate them with "
        "`workbench generate --step-pools K --previews completion` to judge the finished images instead."
    )
annotator_id = annotator()
if annotator_id is not None:
    judge_queue("step", annotator_id, views=_views, context=_context)
