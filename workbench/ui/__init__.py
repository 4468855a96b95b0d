"""Streamlit pages of the workbench. Each page reads widgets, calls one library function and renders it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

_HERE = Path(__file__).parent


def pages() -> list:
    """The app's pages, in navigation order."""
    return [
        st.Page(str(_HERE / "overview.py"), title="Overview", icon=":material/dashboard:", default=True),
        st.Page(str(_HERE / "annotate.py"), title="Annotate", icon=":material/compare:"),
        st.Page(str(_HERE / "noisy_steps.py"), title="Noisy steps", icon=":material/blur_on:"),
    ]
