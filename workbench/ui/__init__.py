"""Streamlit pages of the workbench."""
