"""Noisy steps: judge candidates of a step pool, each shown as its predicted final image (x0)."""

import streamlit as st

from labeling.queue import QueueItem, pool_candidates
from workbench.ui.judging import annotator, image_bytes, judge_queue
from workbench.ui.state import store


@st.cache_data(max_entries=1024, show_spinner=False)
def _candidates(pool_id: int) -> list[tuple[str, str]]:
    return pool_candidates(store(), pool_id)


def _position(item: QueueItem) -> None:
    if item.step_index is None:
        st.markdown(f"Timestep **t = {item.timestep}**")
        return
    st.progress(
        item.step_index / item.num_steps,
        text=f"Step **{item.step_index} of {item.num_steps}** of the denoising chain · timestep **t = {item.timestep}**",
    )


st.title("Noisy steps")
st.caption(
    "Each image is the model's prediction of the final image from one continuation of the same noisy state. "
    "Pick the continuation that is on the better way to the prompt."
)
annotator_id = annotator()
if annotator_id is not None:
    item = judge_queue("step", annotator_id, context=_position)
    if item is not None and item.pool_id is not None:
        candidates = _candidates(item.pool_id)
        with st.expander(f"All {len(candidates)} candidates of this pool"):
            st.image([image_bytes(*c) for c in candidates], width=128)
