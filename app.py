"""Streamlit entry point: navigation only. Start with `make run` or `workbench app`."""

import streamlit as st

from workbench.ui import pages

st.set_page_config(page_title="Preference workbench", layout="wide")
st.navigation(pages()).run()
