"""What every page shares: the store of this server's workbench home, and who is signed in."""

from __future__ import annotations

import streamlit as st

from datastore.store import Store
from workbench.access import AccessConfig, User, get_user, sign_in_required, verify
from workbench.settings import resolve_home

ANNOTATOR_CHOICES = {"People and AI": "both", "People": "human", "AI": "ai"}
"""The Annotators select box of the data pages: each label and its key in ``datastore.records.ANNOTATOR_KINDS``."""

_SIGNED_IN = "signed_in"
"""Session-state key holding the signed-in user's name (never a password)."""


@st.cache_resource
def _open(home: str) -> Store:
    return Store.open(home)


def store() -> Store:
    """The store in $WORKBENCH_HOME (else ~/.workbench), opened once per server and home."""
    return _open(str(resolve_home()))


def access_config() -> AccessConfig:
    """Where this server's users are, and whether sign-in is asked for on loopback."""
    return AccessConfig.from_env(resolve_home())


def sign_in_needed() -> bool:
    """Whether this server asks people to sign in (rule: ``workbench.access.sign_in_required``)."""
    return sign_in_required(st.get_option("server.address"), access_config())


def signed_in() -> User | None:
    """The person signed in to this session, read from the users file on every run (so a
    removed user is signed out and a changed role applies at once); None when nobody is."""
    name = st.session_state.get(_SIGNED_IN)
    if name is None:
        return None
    user = get_user(access_config().users_file, name)
    if user is None:
        sign_out()
    return user


def sign_in(name: str, password: str) -> User:
    """Sign this session in. Raises SignInError with the one generic message on failure, and
    SignInLimitError after too many failures for the name or from this browser's address."""
    user = verify(access_config().users_file, name.strip(), password, client=st.context.ip_address or "local")
    _forget_session()
    st.session_state[_SIGNED_IN] = user.name
    return user


def sign_out() -> None:
    """Sign this session out and forget its queues."""
    _forget_session()


def is_admin_view() -> bool:
    """Whether this session may see admin pages: a signed-in admin, or the local user when
    sign-in is not required."""
    user = signed_in()
    return user.is_admin if user is not None else not sign_in_needed()


def require_admin() -> None:
    """Stop the page here unless the viewer may see admin pages. Call it first on every admin
    page, in every fragment of one (its reruns do not run the page) and in every callback."""
    if not is_admin_view():
        st.error("This page is for admins.")
        st.stop()


def _forget_session() -> None:
    for key in [
        k
        for k in st.session_state
        if k == _SIGNED_IN or str(k).startswith(("queue_", "skipped_", "annotator"))
    ]:
        del st.session_state[key]
