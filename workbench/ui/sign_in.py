"""Sign in: the only page while the app asks for it and nobody is signed in."""

import streamlit as st

from workbench.access import SignInError, SignInLimitError, list_users
from workbench.ui.state import access_config, sign_in


def _submit() -> None:
    try:
        sign_in(st.session_state["sign_in_name"], st.session_state["sign_in_password"])
    except (SignInError, SignInLimitError) as e:
        st.session_state["sign_in_error"] = str(e)
    else:
        st.session_state.pop("sign_in_error", None)
    st.session_state["sign_in_password"] = ""  # the password does not outlive the press


st.title("Sign in")
if not list_users(access_config().users_file):
    st.warning("Nobody can sign in yet: on the server, run `workbench user add NAME --role admin`.")
with st.form("sign_in_form"):
    st.text_input("Name", key="sign_in_name", autocomplete="username")
    st.text_input("Password", key="sign_in_password", type="password", autocomplete="current-password")
    st.form_submit_button("Sign in", key="sign_in_submit", on_click=_submit, type="primary")
if "sign_in_error" in st.session_state:
    st.error(st.session_state["sign_in_error"])
