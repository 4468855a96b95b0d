"""Users, roles and sign-in rules (workbench.access) and the `workbench user` commands, on a real store."""

from __future__ import annotations

import json
import stat
import time
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datastore.records import ensure_annotator
from datastore.store import Store
from workbench.access import (
    SIGN_IN_FAILED,
    AccessConfig,
    AccessError,
    SignInError,
    User,
    add_user,
    check_serving,
    get_user,
    is_loopback,
    list_users,
    remove_user,
    set_password,
    sign_in_required,
    verify,
)
from workbench.cli import app

runner = CliRunner()
PASSWORD = "correct horse battery"


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return tmp_path / "home" / "users.toml"


def _annotators(store: Store) -> list[tuple]:
    with store.read() as con:
        return con.execute("SELECT id, name, kind FROM annotators ORDER BY id").fetchall()


def test_users_file_holds_salted_scrypt_hashes_only_with_mode_0600(store: Store, users: Path) -> None:
    ada = add_user(store, users, "ada", "admin", PASSWORD)
    bob = add_user(store, users, "bob", "annotator", PASSWORD)
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    text = users.read_text()
    assert PASSWORD not in text
    entries = tomllib.loads(text)["users"]
    hashes = [entries[n]["password"] for n in ("ada", "bob")]
    # Same password, different salts: different hashes, both with the documented cost.
    assert hashes[0] != hashes[1] and all(h.startswith("scrypt$16384$8$1$") for h in hashes)
    # Each user is linked to a human annotator of the same name; no secret reaches the store.
    assert _annotators(store) == [(ada.annotator_id, "ada", "human"), (bob.annotator_id, "bob", "human")]
    for f in store.home.glob("workbench.duckdb*"):
        data = f.read_bytes()
        assert PASSWORD.encode() not in data and b"scrypt$" not in data
    assert list_users(users) == [ada, bob] and ada.is_admin and not bob.is_admin
    assert [p.name for p in users.parent.glob(".users.toml.*.tmp")] == []


def test_verify_refuses_wrong_password_and_unknown_name_alike(store: Store, users: Path) -> None:
    ada = add_user(store, users, "ada", "admin", PASSWORD)
    assert verify(users, "ada", PASSWORD) == ada
    messages, seconds = {}, {}
    for case, (name, password) in {"wrong": ("ada", PASSWORD + "!"), "unknown": ("eve", PASSWORD)}.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            with pytest.raises(SignInError) as e:
                verify(users, name, password)
            times.append(time.perf_counter() - start)
            messages[case] = str(e.value)
        seconds[case] = min(times)  # load on the machine only ever adds time
    assert messages == {"wrong": SIGN_IN_FAILED, "unknown": SIGN_IN_FAILED}
    # An unknown name costs a full scrypt hash too (a bare lookup would be ~1000x faster).
    assert seconds["unknown"] > 0.3 * seconds["wrong"], seconds


def test_bad_input_is_refused_and_changes_nothing(store: Store, users: Path) -> None:
    add_user(store, users, "ada", "admin", PASSWORD)
    with store.write() as con:
        ensure_annotator(con, "shapes-oracle@1", kind="ai")
    before_file, before_rows = users.read_bytes(), _annotators(store)
    cases = [
        (("bob", "annotator", "short"), "8 to 1024 characters, got 5"),
        (("bob", "owner", PASSWORD), "role must be one of annotator, admin, got 'owner'"),
        (("bob smith", "annotator", PASSWORD), "a user name needs"),
        (("", "annotator", PASSWORD), "a user name needs"),
        (("ada", "annotator", PASSWORD), "user 'ada' already exists"),
        (("shapes-oracle@1", "annotator", PASSWORD), "is an AI annotator"),
    ]
    for (name, role, password), message in cases:
        with pytest.raises(AccessError, match=message):
            add_user(store, users, name, role, password)
    with pytest.raises(AccessError, match="no user called 'bob'"):
        set_password(users, "bob", PASSWORD)
    with pytest.raises(AccessError, match="no user called 'bob'"):
        remove_user(users, "bob")
    with pytest.raises(AccessError, match="8 to 1024"):
        set_password(users, "ada", "")
    assert users.read_bytes() == before_file and _annotators(store) == before_rows


def test_new_password_and_removal(store: Store, users: Path) -> None:
    add_user(store, users, "ada", "admin", PASSWORD)
    bob = add_user(store, users, "bob", "annotator", PASSWORD)
    set_password(users, "bob", "a new secret")
    with pytest.raises(SignInError):
        verify(users, "bob", PASSWORD)
    assert verify(users, "bob", "a new secret") == bob
    remove_user(users, "bob")
    assert get_user(users, "bob") is None and [u.name for u in list_users(users)] == ["ada"]
    with pytest.raises(SignInError, match=SIGN_IN_FAILED):
        verify(users, "bob", "a new secret")
    assert (bob.annotator_id, "bob", "human") in _annotators(store)  # the person's history stays


def test_unsafe_users_files_are_refused(store: Store, users: Path, tmp_path: Path) -> None:
    add_user(store, users, "ada", "admin", PASSWORD)
    users.chmod(0o644)
    with pytest.raises(AccessError, match="may be read by others \\(mode 644\\)"):
        list_users(users)
    inside = Path(__file__).resolve().parents[1] / "users.toml"
    with pytest.raises(AccessError, match="inside the source checkout"):
        add_user(store, inside, "bob", "annotator", PASSWORD)
    assert not inside.exists()
    broken = tmp_path / "broken.toml"
    broken.write_text('[users.eve]\nrole = "admin"\n')
    broken.chmod(0o600)
    with pytest.raises(AccessError, match="entry 'eve' needs role, annotator_id and an scrypt password hash"):
        verify(broken, "eve", PASSWORD)


def test_sign_in_rule(store: Store, users: Path) -> None:
    loopback = ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost", "LOCALHOST")
    open_ = ("0.0.0.0", "::", "192.168.1.5", "example.org", "", None)
    assert [is_loopback(a) for a in loopback + open_] == [True] * 6 + [False] * 6
    off, on = AccessConfig(users), AccessConfig(users, require_sign_in=True)
    cases = [(a, c) for a in ("127.0.0.1", "0.0.0.0") for c in (off, on)]
    # No users yet: loopback never asks; an open address always does.
    assert [sign_in_required(a, c) for a, c in cases] == [False, False, True, True]
    add_user(store, users, "ada", "admin", PASSWORD)
    assert [sign_in_required(a, c) for a, c in cases] == [False, True, True, True]


def test_config_from_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WORKBENCH_USERS_FILE", raising=False)
    monkeypatch.delenv("WORKBENCH_REQUIRE_SIGN_IN", raising=False)
    assert AccessConfig.from_env(tmp_path) == AccessConfig(tmp_path / "users.toml", require_sign_in=False)
    monkeypatch.setenv("WORKBENCH_USERS_FILE", str(tmp_path / "secrets" / "people.toml"))
    monkeypatch.setenv("WORKBENCH_REQUIRE_SIGN_IN", "Yes")
    assert AccessConfig.from_env(tmp_path) == AccessConfig(tmp_path / "secrets" / "people.toml", True)
    monkeypatch.setenv("WORKBENCH_REQUIRE_SIGN_IN", "maybe")
    with pytest.raises(AccessError, match="must be 1/true/yes/on or 0/false/no/off, got 'maybe'"):
        AccessConfig.from_env(tmp_path)


def test_serving_beyond_loopback_needs_an_admin(store: Store, users: Path) -> None:
    config = AccessConfig(users)
    check_serving("127.0.0.1", config)
    with pytest.raises(AccessError, match="'0.0.0.0' opens the app to the network.*has no admin"):
        check_serving("0.0.0.0", config)
    add_user(store, users, "bob", "annotator", PASSWORD)
    with pytest.raises(AccessError, match="has no admin"):
        check_serving("0.0.0.0", config)
    add_user(store, users, "ada", "admin", PASSWORD)
    check_serving("0.0.0.0", config)


def _cli(home: Path, *args: str, **kwargs) -> tuple[int, str]:
    result = runner.invoke(app, ["--home", str(home), *args], **kwargs)
    return result.exit_code, result.output


def test_cli_add_list_passwd_remove(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WORKBENCH_USERS_FILE", raising=False)
    monkeypatch.delenv("WORKBENCH_PASSWORD", raising=False)
    home = tmp_path / "home"
    users = home / "users.toml"
    secret = tmp_path / "pw.txt"
    secret.write_text(PASSWORD + "\n")
    assert _cli(home, "user", "add", "ada", "--role", "admin", "--password-file", str(secret))[0] == 0
    # Hidden prompt, asked twice.
    code, out = _cli(home, "user", "add", "bob", input="bob's secret\nbob's secret\n")
    assert code == 0 and "added bob (annotator, annotator " in out and "bob's secret" not in out
    monkeypatch.setenv("WORKBENCH_PASSWORD", "carol's secret")
    assert _cli(home, "user", "add", "carol", "--role", "annotator")[0] == 0
    ids = {u.name: u.annotator_id for u in list_users(users)}
    code, out = _cli(home, "user", "list", "--json")
    assert code == 0 and json.loads(out) == [
        {"name": "ada", "role": "admin", "annotator": ids["ada"]},
        {"name": "bob", "role": "annotator", "annotator": ids["bob"]},
        {"name": "carol", "role": "annotator", "annotator": ids["carol"]},
    ]
    assert verify(users, "ada", PASSWORD).is_admin
    assert verify(users, "bob", "bob's secret") == User("bob", "annotator", ids["bob"])
    assert verify(users, "carol", "carol's secret").name == "carol"
    assert _cli(home, "user", "passwd", "carol", "--password-file", str(secret))[0] == 0
    assert verify(users, "carol", PASSWORD).name == "carol"
    assert _cli(home, "user", "remove", "bob")[0] == 0
    assert [u.name for u in list_users(users)] == ["ada", "carol"]


def test_cli_refuses_plain_passwords_and_bad_input(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WORKBENCH_USERS_FILE", raising=False)
    monkeypatch.delenv("WORKBENCH_PASSWORD", raising=False)
    home = tmp_path / "home"
    code, out = _cli(home, "user", "add", "ada", "--password", PASSWORD)
    assert code == 2 and "No such option: --password" in out
    code, out = _cli(home, "user", "add", "ada", "--role", "root", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert code == 2 and "root" in out
    code, out = _cli(home, "user", "add", "ada", "--password-file", str(tmp_path / "missing.txt"))
    assert code == 1 and "cannot read the password file" in out
    code, out = _cli(home, "user", "remove", "ada")
    assert code == 1 and "no user called 'ada'" in out
    code, out = _cli(home, "app", "--address", "0.0.0.0")
    assert code == 1 and "has no admin: first run `workbench user add NAME --role admin`" in out
    code, out = _cli(home, "user", "list")
    assert code == 0 and "no users in" in out and not (home / "users.toml").exists()
