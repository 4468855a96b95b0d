"""Overview: what the store holds."""

import streamlit as st

from datastore.datasets import list_dataset_versions
from datastore.records import store_stats
from workbench.ui.state import require_admin, store

require_admin()
st.title("Preference workbench")
st.caption(f"Home: `{store().home}`")
with store().read() as con:
    counts = store_stats(con)
cols = st.columns(5)
for col, key in zip(cols, ("prompts", "images", "pairs", "judgments", "annotators"), strict=True):
    col.metric(key.capitalize(), counts[key])
left, right = st.columns(2)
left.subheader("Pairs by kind")
left.bar_chart(counts["pairs_by_kind"] or {"final": 0})
right.subheader("Judgments by outcome")
right.bar_chart(counts["judgments_by_outcome"] or {"a": 0})
st.subheader("Dataset versions")
st.dataframe(list_dataset_versions(store()), width="stretch", hide_index=True)
