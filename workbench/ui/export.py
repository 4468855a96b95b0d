"""Export: choose or save a curation, build its dataset version, then download it or write it to a folder."""

from pathlib import Path

import streamlit as st

from datastore.datasets import DatasetFilters
from datastore.errors import StoreError
from datastore.exports import export_dataset
from datastore.records import ANNOTATOR_KINDS, SOURCES
from labeling.curation import (
    Curation,
    CurationError,
    build_curation,
    export_download,
    list_curations,
    save_curation,
)
from workbench.ui.state import ANNOTATOR_CHOICES, require_admin, store

NEW = "New curation..."
STEP_JUDGMENT_CHOICES = {"all": "all of them", "completion": "only those made on completion previews"}
FORMATS = {"pickapic": "Pick-a-Pic Parquet", "jsonl": "JSONL + images", "hf": "Hugging Face datasets folder"}

require_admin()
st.title("Export")

curations = {c.name: c for c in list_curations(store())}
if "export_saved" in st.session_state:  # select a curation just saved (before the widget exists)
    st.session_state["export_curation"] = st.session_state.pop("export_saved")
choice = st.selectbox("Curation", [*curations, NEW], key="export_curation")
if choice == NEW:
    with st.form("export_new_curation"):
        name = st.text_input("Name", key="new_name")
        method = st.radio("Consensus", ["majority", "dawid_skene"], horizontal=True, key="new_method")
        kinds = st.multiselect("Pair kinds", ["final", "step"], default=["final", "step"], key="new_kinds")
        annotators = st.selectbox("Annotators", list(ANNOTATOR_CHOICES), key="new_annotators")
        sources = st.multiselect("Sources (none = all)", list(SOURCES), key="new_sources")
        step_judgments = st.radio(
            "Step pairs: judgments that count",
            list(STEP_JUDGMENT_CHOICES),
            format_func=STEP_JUDGMENT_CHOICES.get,
            horizontal=True,
            key="new_step_judgments",
        )
        c1, c2, c3 = st.columns(3)
        min_judgments = c1.number_input("Min judgments", min_value=1, value=1, key="new_min_judgments")
        min_agreement = c2.number_input("Min agreement", 0.0, 1.0, 0.0, step=0.05, key="new_min_agreement")
        min_gold = c3.number_input("Min gold accuracy", 0.0, 1.0, 0.0, step=0.05, key="new_min_gold")
        margin = c1.number_input("Min AI score margin", min_value=0.0, value=0.0, step=0.05, key="new_margin")
        dedup = c2.number_input("Near-duplicate distance (-1 = keep)", -1, 64, -1, key="new_dedup")
        ties = c3.checkbox("Keep ties", value=True, key="new_ties")
        both_bad = c3.checkbox("Count both-bad", value=True, key="new_both_bad")
        gold = c3.checkbox("Keep gold pairs", value=True, key="new_gold")
        if st.form_submit_button("Save curation"):
            try:
                filters = DatasetFilters(
                    kinds=tuple(kinds),
                    sources=tuple(sources),
                    annotator_kinds=ANNOTATOR_KINDS[ANNOTATOR_CHOICES[annotators]],
                    min_ai_margin=margin,
                    include_both_bad=both_bad,
                    min_judgments=int(min_judgments),
                    min_agreement=min_agreement,
                    include_ties=ties,
                    include_gold=gold,
                    step_judgments=step_judgments,
                )
                curation = Curation(name, method, filters, min_gold, None if dedup < 0 else int(dedup))
                save_curation(store(), curation)
            except (StoreError, CurationError) as e:
                st.error(str(e))
            else:
                st.session_state["export_saved"] = name
                st.rerun()
    st.stop()

curation = curations[choice]
st.caption(f"Method **{curation.method}**")
st.json(curation.settings(), expanded=False)
if st.button("Build dataset version", type="primary", key="export_build"):
    try:
        st.session_state["export_version"] = build_curation(store(), curation)
    except (StoreError, CurationError) as e:
        st.error(str(e))
version = st.session_state.get("export_version")
if version is None or version.name != curation.name:
    st.stop()

cols = st.columns(3)
cols[0].metric("Pairs", version.n_pairs)
cols[1].metric("Ties", version.counts["ties"])
cols[2].metric("Judgments", version.counts["judgments"])
st.success(f"Dataset version `{version.id}`, content hash `{version.content_hash}`")

fmt = st.radio("Format", list(FORMATS), format_func=FORMATS.get, horizontal=True, key="export_format")
left, right = st.columns(2)
folder = left.text_input("Folder", value=str(store().home / "exports"), key="export_folder")
if left.button("Write to folder", key="export_write"):
    try:
        written = export_dataset(version, fmt, Path(folder), show_progress=False)
    except StoreError as e:
        left.error(str(e))
    else:
        left.success(f"Wrote `{written}`")
if right.button("Prepare download", key="export_prepare"):
    st.session_state["export_download"] = (version.id, fmt, *export_download(version, fmt))
prepared = st.session_state.get("export_download")
if prepared is not None and prepared[:2] == (version.id, fmt):
    right.download_button(
        f"Download {prepared[2]}", prepared[3], file_name=prepared[2], key="export_download_button"
    )
