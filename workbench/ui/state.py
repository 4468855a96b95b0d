"""What every page shares: the store of this server's workbench home."""

from __future__ import annotations

import streamlit as st

from datastore.store import Store
from workbench.settings import resolve_home


@st.cache_resource
def _open(home: str) -> Store:
    return Store.open(home)


def store() -> Store:
    """The store in $WORKBENCH_HOME (else ~/.workbench), opened once per server and home."""
    return _open(str(resolve_home()))
