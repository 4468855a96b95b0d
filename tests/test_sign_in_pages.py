"""Signing in to the app, headless through AppTest, on a real store and a real users file."""

from __future__ import annotations

from pathlib import Path

import pytest
from labeling_data import add_shapes_pairs
from streamlit import config
from streamlit.testing.v1 import AppTest
from test_annotate_pages import answer, send, widget_args

from datastore.store import Store
from workbench.access import SIGN_IN_FAILED, User, add_user, remove_user

APP = str(Path(__file__).resolve().parents[1] / "app.py")
ADMIN_PAGES = ("overview.py", "train.py", "rounds.py", "data.py", "export.py")
ANNOTATION_PAGES = ("annotate.py", "noisy_steps.py")


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    monkeypatch.delenv("WORKBENCH_USERS_FILE", raising=False)
    monkeypatch.setenv("WORKBENCH_REQUIRE_SIGN_IN", "1")
    return home


@pytest.fixture
def people(home: Path) -> dict[str, User]:
    store = Store.open(home)
    return {
        "ada": add_user(store, home / "users.toml", "ada", "admin", "ada's password"),
        "ann": add_user(store, home / "users.toml", "ann", "annotator", "ann's password"),
    }


def _sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(password)
    at.button(key="sign_in_submit").click().run()
    assert not at.exception
    return at


def _pages(at: AppTest) -> set[str]:
    """The pages this session's navigation offers (switch_page refuses a page it does not register)."""
    offered = set()
    for page in ADMIN_PAGES + ANNOTATION_PAGES + ("sign_in.py",):
        try:
            at.switch_page(f"workbench/ui/{page}")
        except ValueError:
            continue
        offered.add(page)
    return offered


def test_wrong_password_and_unknown_name_are_refused_alike(home: Path, people: dict[str, User]) -> None:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert at.title[0].value == "Sign in" and _pages(at) == {"sign_in.py"}
    for name, password in (("ann", "ada's password"), ("nobody", "ann's password")):
        _sign_in(at, name, password)
        assert [e.value for e in at.error] == [SIGN_IN_FAILED]
        assert at.title[0].value == "Sign in" and "signed_in" not in at.session_state
        assert at.text_input(key="sign_in_password").value == ""


def test_annotator_sees_only_annotation_pages_and_judges_as_themselves(
    home: Path, people: dict[str, User]
) -> None:
    store = Store.open(home)
    add_shapes_pairs(store, 2)
    at = _sign_in(AppTest.from_file(APP, default_timeout=60).run(), "ann", "ann's password")
    assert not at.error and at.title[0].value == "Annotate"
    assert _pages(at) == set(ANNOTATION_PAGES)
    # No name box: the queue is the signed-in annotator's.
    assert not at.text_input and "Annotating as **ann**" in [m.value for m in at.sidebar.markdown]
    pair = widget_args(at)["pairs"][0]
    at.switch_page("workbench/ui/annotate.py")  # _pages left another page selected
    send(at, "final", 1, [answer(pair, "left", "e1" * 8)], [])
    with store.read() as con:
        rows = con.execute("SELECT pair_id, annotator_id, source FROM judgments").fetchall()
    assert rows == [(pair["id"], people["ann"].annotator_id, "app")]


def test_admin_sees_every_page_and_signs_out(home: Path, people: dict[str, User]) -> None:
    at = _sign_in(AppTest.from_file(APP, default_timeout=60).run(), "ada", "ada's password")
    assert at.title[0].value == "Preference workbench" and at.metric  # the Overview, the admin's first page
    assert _pages(at) == set(ADMIN_PAGES + ANNOTATION_PAGES)
    assert "Signed in as **ada** (admin)" in [c.value for c in at.sidebar.caption]
    at.button(key="sign_out").click().run()
    assert at.title[0].value == "Sign in" and _pages(at) == {"sign_in.py"}


def test_a_removed_user_is_signed_out_on_the_next_run(home: Path, people: dict[str, User]) -> None:
    at = _sign_in(AppTest.from_file(APP, default_timeout=60).run(), "ada", "ada's password")
    assert at.title[0].value == "Preference workbench"
    remove_user(home / "users.toml", "ada")
    at.run()
    assert at.title[0].value == "Sign in" and "signed_in" not in at.session_state


def test_an_open_address_asks_everyone_to_sign_in(home: Path, people: dict[str, User], monkeypatch) -> None:
    monkeypatch.delenv("WORKBENCH_REQUIRE_SIGN_IN")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert at.title[0].value == "Preference workbench"  # loopback, sign-in not asked: the local user sees all
    assert _pages(at) == set(ADMIN_PAGES + ANNOTATION_PAGES)
    # As `workbench app --address 0.0.0.0` sets it for the server.
    address = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
    finally:
        config.set_option("server.address", address)
    assert at.title[0].value == "Sign in" and _pages(at) == {"sign_in.py"}


def _guarded_page() -> None:
    import streamlit as st

    from workbench.ui.state import require_admin

    require_admin()
    st.write("admin only")


@pytest.mark.parametrize(("name", "shown"), [("ada", True), ("ann", False), (None, False)])
def test_require_admin_stops_the_page_for_everyone_else(
    home: Path, people: dict[str, User], name: str | None, shown: bool
) -> None:
    at = AppTest.from_function(_guarded_page, default_timeout=60)
    if name is not None:
        at.session_state["signed_in"] = name
    at.run()
    assert not at.exception
    assert ("admin only" in [m.value for m in at.markdown]) == shown
    assert [e.value for e in at.error] == ([] if shown else ["This page is for admins."])


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_every_admin_page_refuses_a_signed_in_annotator(
    home: Path, people: dict[str, User], page: str
) -> None:
    # Run the page file itself: the navigation hides it from annotators, the page must refuse on its own.
    at = AppTest.from_file(str(Path(APP).parent / "workbench" / "ui" / page), default_timeout=60)
    at.session_state["signed_in"] = "ann"
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == ["This page is for admins."]
    assert not at.title and not at.button  # stopped before drawing anything of its own
