"""Noisy steps: judge candidates of a step pool, each shown as its predicted final image (x0)."""

import streamlit as st

from labeling.queue import QueueItem
from workbench.ui.judging import annotator, judge_queue


def _position(item: QueueItem) -> str:
    if item.step_index is None:
        return f"Timestep t = {item.timestep}"
    return f"Step {item.step_index} of {item.num_steps} of the denoising chain · timestep t = {item.timestep}"


st.title("Noisy steps")
st.caption(
    "Each image is the model's prediction of the final image from one continuation of the same noisy state. "
    "Pick the continuation that is on the better way to the prompt."
)
annotator_id = annotator()
if annotator_id is not None:
    judge_queue("step", annotator_id, context=_position)
