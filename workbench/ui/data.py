"""Data: the judgments, with agreement, annotator quality, position bias, rates and near-duplicates."""

import streamlit as st

from datastore.datasets import DatasetFilters, judgments_frame
from datastore.records import ANNOTATOR_KINDS, SOURCES
from labeling.agreement import AgreementUndefined, agreement_report
from labeling.curation import near_duplicate_pairs
from workbench.ui.state import ANNOTATOR_CHOICES, require_admin, store

require_admin()
st.title("Data")
with st.container(horizontal=True):
    kinds = st.multiselect("Pair kinds", ["final", "step"], default=["final", "step"], key="data_kinds")
    annotators = st.selectbox("Annotators", list(ANNOTATOR_CHOICES), key="data_annotators")
    sources = st.multiselect("Sources (none = all)", list(SOURCES), key="data_sources")
    margin = st.number_input("Min AI score margin", min_value=0.0, value=0.0, step=0.05, key="data_margin")
    both_bad = st.checkbox("Count both-bad", value=True, key="data_both_bad")
if not kinds:
    st.warning("Choose at least one pair kind.")
    st.stop()
filters = DatasetFilters(
    kinds=tuple(kinds),
    sources=tuple(sources),
    annotator_kinds=ANNOTATOR_KINDS[ANNOTATOR_CHOICES[annotators]],
    min_ai_margin=margin,
    include_both_bad=both_bad,
)
try:
    report = agreement_report(store(), filters)
except AgreementUndefined as e:
    st.info(f"Nothing to show: {e}.")
    st.stop()

cols = st.columns(4)
cols[0].metric("Judgments", report.judgments)
cols[1].metric("Pairs", report.pairs)
cols[2].metric("Annotators", report.annotators)
cols[3].metric("Krippendorff's alpha", "-" if report.alpha is None else f"{report.alpha:.3f}")
if report.alpha is None:
    st.caption(f"Alpha is undefined: {report.alpha_note}.")

judgments = judgments_frame(store(), filters)
with st.expander(f"Judgments ({judgments.height})"):
    st.dataframe(judgments.drop("image_a", "image_b"), hide_index=True, width="stretch", key="data_judgments")

st.subheader("Agreement between annotators")
st.caption(
    "Cohen's kappa over the pairs both annotators judged (empty kappa: both gave one outcome throughout)."
)
st.dataframe(report.kappa, hide_index=True, width="stretch", key="data_kappa")

st.subheader("Annotator quality")
st.caption("Gold accuracy, and agreement with the majority vote on pairs with two or more judgments.")
st.dataframe(report.quality, hide_index=True, width="stretch", key="data_quality")
if report.quality["consensus_agreement"].drop_nulls().len():
    st.bar_chart(
        report.quality.drop_nulls("consensus_agreement"), x="annotator", y="consensus_agreement", height=220
    )

st.subheader("Position bias")
st.caption("Share of each annotator's decisive picks that were the image shown on the left (0.5 = none).")
st.dataframe(report.position_bias, hide_index=True, width="stretch", key="data_bias")
if report.position_bias.height:
    st.bar_chart(report.position_bias, x="annotator", y="left_share", height=220)

left, right = st.columns(2)
left.subheader("Human vs AI")
left.caption("How often each AI annotator matches the people's majority vote.")
left.dataframe(report.human_ai, hide_index=True, width="stretch", key="data_human_ai")
right.subheader("Ties and both-bad")
right.dataframe(report.outcome_rates, hide_index=True, width="stretch", key="data_rates")

st.subheader("Agreement by timestep")
if report.by_timestep.height:
    st.dataframe(report.by_timestep, hide_index=True, width="stretch", key="data_timestep")
    st.line_chart(report.by_timestep, x="low", y="pairwise_agreement", height=220)
else:
    st.caption("No judged step pairs.")

st.subheader("Near-duplicate pairs")
distance = st.slider("Max dHash distance (bits of 64)", 0, 16, 4, key="data_dup_distance")
if st.button("Find near-duplicate pairs", key="data_find_dups"):
    duplicates = near_duplicate_pairs(store(), judgments, distance)
    st.caption(f"{duplicates.height} pairs whose two images are near-duplicates.")
    st.dataframe(duplicates, hide_index=True, width="stretch", key="data_dups")
