"""Who may sign in to the app, with which role, and when signing in is required.

Users live in a TOML file outside the repository and the store: ``$WORKBENCH_USERS_FILE``, else
``<workbench home>/users.toml``, written atomically with mode 0600. Each entry holds a role
(``annotator`` or ``admin``), the id of the person's annotator row in the store, and an scrypt
hash of the password with its own random salt; no password or hash ever reaches the DuckDB file.

The rule for when the app asks people to sign in lives in :func:`sign_in_required`.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import threading
import time
import tomllib
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import tomli_w

from datastore.atomic import write_text
from datastore.store import Store
from labeling.errors import LabelingError
from labeling.queue import human_annotator
from workbench.errors import WorkbenchError

Role = Literal["annotator", "admin"]
ROLES: tuple[str, ...] = get_args(Role)

USERS_FILE_ENV = "WORKBENCH_USERS_FILE"
"""Environment variable naming the users file (default: ``<home>/users.toml``)."""
REQUIRE_SIGN_IN_ENV = "WORKBENCH_REQUIRE_SIGN_IN"
"""Environment variable (1/true/yes/on or 0/false/no/off) that asks for sign-in on loopback too."""

SIGN_IN_FAILED = "Unknown name or wrong password."
"""The one message for every failed sign-in: it never says which part was wrong."""

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
_REPO_ROOT = Path(__file__).resolve().parents[1]

# scrypt cost: 2^14 x 8 x 1 uses 16 MiB and about 50 ms per hash, OWASP's minimum for scrypt.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SALT_BYTES, _KEY_BYTES = 16, 32
# Checked against when the name is unknown, so that costs one scrypt hash too. The hash of a random
# password that was thrown away: nothing matches it.
_DECOY_HASH = "scrypt$16384$8$1$xIDSo+0h4GQpDy8gIeGQMQ==$mbBTFjpJFygCSG3iTYC5ba7HgsaCTqQCeocrc12eIio="


class AccessError(WorkbenchError):
    """A users-file operation could not be done: a bad name, role or password, or an unsafe file."""


class SignInError(AccessError):
    """A sign-in was refused. Its message is always :data:`SIGN_IN_FAILED`."""


class SignInLimitError(AccessError):
    """Too many failed sign-ins for a name or from a client lately; no password was checked."""


@dataclass(frozen=True)
class SignInLimits:
    """How many failed sign-ins are allowed before the next tries are refused unchecked.

    Attributes:
        per_name: failures for one name (known or not) within ``window_s``.
        per_client: failures from one client address within ``window_s``.
        window_s: the sliding window; a try is allowed again once the oldest failure leaves it.
    """

    per_name: int = 5
    per_client: int = 20
    window_s: float = 300.0


class SignInLimiter:
    """Failed sign-ins of one server process, per users file and name and per users file and client."""

    def __init__(self, limits: SignInLimits | None = None, clock: Callable[[], float] = time.monotonic):
        self.limits = limits or SignInLimits()
        self._clock = clock
        self._failures: dict[tuple, deque[float]] = {}
        self._lock = threading.Lock()

    def _keys(self, path: Path, name: str, client: str | None) -> list[tuple[tuple, int]]:
        keys = [(("name", str(path), name), self.limits.per_name)]
        if client is not None:
            keys.append((("client", str(path), client), self.limits.per_client))
        return keys

    def check(self, path: Path, name: str, client: str | None) -> None:
        """Raises SignInLimitError while ``name`` or ``client`` has too many recent failures."""
        now = self._clock()
        with self._lock:
            for key, limit in self._keys(path, name, client):
                failures = self._failures.get(key)
                while failures and failures[0] <= now - self.limits.window_s:
                    failures.popleft()
                if failures is not None and len(failures) >= limit:
                    wait = failures[0] + self.limits.window_s - now
                    raise SignInLimitError(f"Too many failed sign-ins: try again in {max(1, round(wait))} s.")

    def failed(self, path: Path, name: str, client: str | None) -> None:
        now = self._clock()
        with self._lock:
            for key, _ in self._keys(path, name, client):
                self._failures.setdefault(key, deque()).append(now)


SIGN_IN_LIMITER = SignInLimiter()
"""The failed sign-ins of this process (the app's server), shared by all its sessions."""


@dataclass(frozen=True)
class AccessConfig:
    """Where the users are and whether sign-in is asked for on loopback.

    Attributes:
        users_file: the TOML file of users, outside the repository.
        require_sign_in: ask people to sign in even when the app serves only 127.0.0.1
            (takes effect once users exist).
    """

    users_file: Path
    require_sign_in: bool = False

    @classmethod
    def from_env(cls, home: Path | str) -> AccessConfig:
        """The config of a workbench home, with ``WORKBENCH_USERS_FILE`` and ``WORKBENCH_REQUIRE_SIGN_IN`` applied."""
        env_file = os.environ.get(USERS_FILE_ENV)
        users_file = Path(env_file).expanduser().resolve() if env_file else Path(home) / "users.toml"
        flag = os.environ.get(REQUIRE_SIGN_IN_ENV, "").strip().lower()
        if flag not in ("", "0", "false", "no", "off", "1", "true", "yes", "on"):
            raise AccessError(f"{REQUIRE_SIGN_IN_ENV} must be 1/true/yes/on or 0/false/no/off, got {flag!r}")
        return cls(users_file=users_file, require_sign_in=flag in ("1", "true", "yes", "on"))


@dataclass(frozen=True)
class User:
    """A person who may sign in; ``annotator_id`` is their row in the store's annotators table."""

    name: str
    role: Role
    annotator_id: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def is_loopback(address: str | None) -> bool:
    """Whether a server address reaches only this machine (127.0.0.0/8, ::1, localhost).

    An empty address counts as open: Streamlit then listens on every interface.
    """
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def sign_in_required(server_address: str | None, config: AccessConfig) -> bool:
    """Whether the app must ask people to sign in. The rule, in full:

    - the app serves beyond loopback (Streamlit's ``server.address`` is not 127.0.0.1, ::1 or
      localhost, or is unset): always, even before any user exists (then nobody gets in);
    - on loopback: only when ``config.require_sign_in`` is on and the users file has users;
    - otherwise the local single user sees every page and types a name to annotate.
    """
    if not is_loopback(server_address):
        return True
    return config.require_sign_in and bool(_read(config.users_file))


def check_serving(server_address: str, config: AccessConfig) -> None:
    """Refuse to serve beyond loopback while no admin exists: everyone would meet a sign-in page
    that nobody can pass, and nobody could administer the app.

    Raises:
        AccessError: the address is not loopback and the users file has no admin.
    """
    if not is_loopback(server_address) and not any(u.is_admin for u in list_users(config.users_file)):
        raise AccessError(
            f"address {server_address!r} opens the app to the network, where everyone signs in, "
            f"but {config.users_file} has no admin: first run `workbench user add NAME --role admin`"
        )


def list_users(path: Path) -> list[User]:
    """Every user in the users file, by name (none when the file does not exist)."""
    return [_user(name, entry) for name, entry in sorted(_read(path).items())]


def get_user(path: Path, name: str) -> User | None:
    """The user called ``name``, or None."""
    entry = _read(path).get(name)
    return None if entry is None else _user(name, entry)


def add_user(store: Store, path: Path, name: str, role: str, password: str) -> User:
    """Add a user, linked to the human annotator of the same name in ``store`` (created if new).

    Raises:
        AccessError: a bad name, role or password, a name already taken, or an unsafe users file.
    """
    _check_name(name)
    if role not in ROLES:
        raise AccessError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    _check_password(password)
    with _locked(path):
        users = _read(path)
        if name in users:
            raise AccessError(
                f"user {name!r} already exists: change the password with `workbench user passwd {name}`"
            )
        try:
            annotator_id = human_annotator(store, name)
        except LabelingError as e:
            raise AccessError(str(e)) from e
        users[name] = {"role": role, "annotator_id": annotator_id, "password": _hash(password)}
        _write(path, users)
    return User(name, role, annotator_id)  # type: ignore[arg-type]


def set_password(path: Path, name: str, password: str) -> None:
    """Give an existing user a new password (with a new salt)."""
    _check_password(password)
    with _locked(path):
        users = _read(path)
        if name not in users:
            raise AccessError(f"no user called {name!r} in {path}")
        users[name]["password"] = _hash(password)
        _write(path, users)


def remove_user(path: Path, name: str) -> None:
    """Remove a user. Their annotator row and judgments stay in the store."""
    with _locked(path):
        users = _read(path)
        if name not in users:
            raise AccessError(f"no user called {name!r} in {path}")
        del users[name]
        _write(path, users)


def verify(
    path: Path, name: str, password: str, *, client: str | None = None, limiter: SignInLimiter = SIGN_IN_LIMITER
) -> User:
    """The user whose name and password these are.

    An unknown name costs one scrypt hash like a wrong password, and both are compared in
    constant time, so neither the message nor the time tells which part was wrong. Failures are
    counted per name and per ``client`` (the browser's address); past ``limiter``'s limits a try
    is refused before any password is checked.

    Raises:
        SignInError: with :data:`SIGN_IN_FAILED`, for an unknown name or a wrong password.
        SignInLimitError: too many failed sign-ins for this name or from this client lately.
    """
    limiter.check(path, name, client)
    entry = _read(path).get(name)
    stored = entry["password"] if entry is not None else _DECOY_HASH
    if not _matches(password, stored) or entry is None:
        limiter.failed(path, name, client)
        raise SignInError(SIGN_IN_FAILED)
    return _user(name, entry)


def _password_bytes(password: str) -> bytes:
    # NFKC: the same password typed on another keyboard or OS (composed or decomposed accents,
    # full-width digits) gives the same bytes.
    return unicodedata.normalize("NFKC", password).encode()


def _hash(password: str) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    key = hashlib.scrypt(
        _password_bytes(password),
        salt=salt,
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        dklen=_KEY_BYTES,
        maxmem=64 * 2**20,
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def _matches(password: str, stored: str) -> bool:
    # The cost parameters are read from the stored hash, so older hashes keep verifying.
    _, n, r, p, salt, key = stored.split("$")
    expected = base64.b64decode(key)
    got = hashlib.scrypt(
        _password_bytes(password),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=len(expected),
        maxmem=64 * 2**20,
    )
    return hmac.compare_digest(got, expected)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise AccessError(
            f"a user name needs 1 to 100 letters, digits or . _ @ - (starting with a letter or digit), got {name!r}"
        )


def _check_password(password: str) -> None:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AccessError(
            f"a password needs {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters, got {len(password)}"
        )


def _user(name: str, entry: dict) -> User:
    return User(name=name, role=entry["role"], annotator_id=entry["annotator_id"])


def _check_outside_checkout(path: Path) -> None:
    if (_REPO_ROOT / ".git").exists() and path.resolve().is_relative_to(_REPO_ROOT):
        raise AccessError(
            f"users file {path} is inside the source checkout: keep it outside "
            f"(the workbench home, or {USERS_FILE_ENV})"
        )


def _read(path: Path) -> dict[str, dict]:
    _check_outside_checkout(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & 0o077:
        raise AccessError(
            f"users file {path} may be read by others (mode {mode & 0o777:o}): run `chmod 600 {path}`"
        )
    try:
        users = tomllib.loads(path.read_text()).get("users", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise AccessError(f"users file {path} is not valid TOML: {e}") from e
    for name, entry in users.items():
        valid = (
            isinstance(entry, dict)
            and entry.get("role") in ROLES
            and isinstance(entry.get("annotator_id"), int)
            and isinstance(entry.get("password"), str)
            and entry["password"].startswith("scrypt$")
            and entry["password"].count("$") == 5
        )
        if not valid:
            raise AccessError(
                f"users file {path}: entry {name!r} needs role, annotator_id and an scrypt password hash"
            )
    return users


def _write(path: Path, users: dict[str, dict]) -> None:
    text = "# People who may sign in to the workbench app. Managed by `workbench user`.\n" + tomli_w.dumps(
        {"users": users}
    )
    write_text(path, text, private=True)  # password hashes: readable by the owner only


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the users file across processes; refuse a file in the checkout."""
    _check_outside_checkout(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
