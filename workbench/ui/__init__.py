"""Streamlit pages of the workbench. Each page reads widgets, calls one library function and renders it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

_HERE = Path(__file__).parent


def annotation_pages() -> list:
    """Pages every signed-in person sees: the annotation pages."""
    return [
        st.Page(str(_HERE / "annotate.py"), title="Annotate", icon=":material/compare:"),
        st.Page(str(_HERE / "noisy_steps.py"), title="Noisy steps", icon=":material/blur_on:"),
    ]


def admin_pages() -> list:
    """Pages only admins see: the store, training, rounds, data quality and exports."""
    return [
        st.Page(str(_HERE / "overview.py"), title="Overview", icon=":material/dashboard:", default=True),
        st.Page(str(_HERE / "train.py"), title="Train", icon=":material/model_training:"),
        st.Page(str(_HERE / "rounds.py"), title="Rounds", icon=":material/autorenew:"),
        st.Page(str(_HERE / "data.py"), title="Data", icon=":material/table_chart:"),
        st.Page(str(_HERE / "export.py"), title="Export", icon=":material/download:"),
    ]


def pages() -> dict[str, list]:
    """The app's pages by navigation section."""
    return {"Workbench": admin_pages(), "Annotation": annotation_pages()}
