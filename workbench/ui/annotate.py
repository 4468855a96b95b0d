"""Annotate: judge pairs of finished images, one after the other, with the keys 1-4 (``?`` for help)."""

import streamlit as st

from workbench.ui.judging import annotator, judge_queue

st.title("Annotate")
annotator_id = annotator()
if annotator_id is not None:
    judge_queue("final", annotator_id)
