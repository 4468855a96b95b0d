"""Streamlit pages of the workbench. Each page reads widgets, calls one library function and renders it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from workbench.ui.state import sign_in_needed, sign_out, signed_in

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


def pages() -> dict[str, list] | list:
    """The pages this session may open, by navigation section, with the sign-out button.

    Sign-in required and nobody signed in: only the sign-in page. A signed-in annotator: the
    annotation pages. A signed-in admin, or the local user when sign-in is not required: all.
    """
    user = signed_in()
    if user is None and sign_in_needed():
        return [st.Page(str(_HERE / "sign_in.py"), title="Sign in", icon=":material/login:")]
    if user is not None:
        st.sidebar.caption(f"Signed in as **{user.name}** ({user.role})")
        st.sidebar.button("Sign out", key="sign_out", on_click=sign_out, icon=":material/logout:")
        if not user.is_admin:
            return {"Annotation": annotation_pages()}
    return {"Workbench": admin_pages(), "Annotation": annotation_pages()}
