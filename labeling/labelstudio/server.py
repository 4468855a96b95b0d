"""A local Label Studio server serving one workbench home's media, and its admin credentials.

Images are served by Label Studio from the media folder, never copied into tasks. Label Studio
refuses a local storage whose path equals its document root, so the document root is a folder
that holds only a link to the media folder (``<home>/labelstudio/files/media``), and the
project's local storage is that link: nothing else of the home can be served.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from datastore.atomic import write_text
from labeling.labelstudio.client import LabelStudioError

DEFAULT_PORT = 8080
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_BINARY = Path(__file__).resolve().parents[2] / ".venv-labelstudio" / "bin" / "label-studio"
MEDIA_LINK = "media"
"""Name of the link to the media folder inside the document root; the first part of every image path."""


# Credentials ------------------------------------------------------------------------------------

_CREDENTIAL_ENV = {"username": "LABEL_STUDIO_USERNAME", "password": "LABEL_STUDIO_PASSWORD", "token": "LABEL_STUDIO_USER_TOKEN"}


@dataclass(frozen=True)
class Credentials:
    """The admin account a local server is started with.

    Attributes:
        username: the admin's e-mail.
        password: the admin's password (for the browser).
        token: the admin's legacy API token (6 to 40 characters).
        source: where each value came from, for messages; holds no secret.
    """

    username: str
    password: str
    token: str
    source: str


def credentials_path() -> Path:
    """The credentials file: ``$XDG_CONFIG_HOME/workbench/labelstudio.json`` (default ``~/.config``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "workbench" / "labelstudio.json"


def load_credentials(path: Path | None = None, *, create: bool = False) -> Credentials:
    """The server's admin credentials: each from its environment variable, else from the file.

    Environment variables: ``LABEL_STUDIO_USERNAME``, ``LABEL_STUDIO_PASSWORD``,
    ``LABEL_STUDIO_USER_TOKEN``. Secrets live in the environment or in a file readable by its
    owner only, never in the repository or the store.

    Args:
        path: the credentials file (default :func:`credentials_path`).
        create: generate the values that are missing and save them in the file.

    Raises:
        LabelStudioError: a value is missing and ``create`` is False, the file is unreadable, or
            the token's length is outside Label Studio's 6..40 characters.
    """
    path = path or credentials_path()
    stored = _read_private(path)
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    for key, env in _CREDENTIAL_ENV.items():
        if os.environ.get(env):
            values[key], origins[key] = os.environ[env], f"${env}"
        elif stored.get(key):
            values[key], origins[key] = stored[key], str(path)
    missing = [key for key in _CREDENTIAL_ENV if key not in values]
    if missing and not create:
        raise LabelStudioError(
            f"no Label Studio {', '.join(missing)}: set {', '.join(_CREDENTIAL_ENV[k] for k in missing)} "
            f"or run `workbench labelstudio serve` once to create {path}"
        )
    if missing:
        generated = {"username": "admin@workbench.local", "password": secrets.token_urlsafe(18), "token": secrets.token_hex(20)}
        for key in missing:
            values[key], origins[key] = generated[key], f"{path} (new)"
        _write_private(path, {**stored, **{key: values[key] for key in missing}})
    if not 6 <= len(values["token"]) <= 40:
        raise LabelStudioError(f"the Label Studio token from {origins['token']} must have 6 to 40 characters")
    by_origin: dict[str, list[str]] = {}
    for key in _CREDENTIAL_ENV:
        by_origin.setdefault(origins[key], []).append(key)
    source = "; ".join(f"{', '.join(keys)} from {origin}" for origin, keys in by_origin.items())
    return Credentials(values["username"], values["password"], values["token"], source)


def api_token(path: Path | None = None) -> str:
    """The API token a client uses when none is given: ``$LABEL_STUDIO_USER_TOKEN``, else the file's."""
    if os.environ.get(_CREDENTIAL_ENV["token"]):
        return os.environ[_CREDENTIAL_ENV["token"]]
    path = path or credentials_path()
    token = _read_private(path).get("token")
    if not token:
        raise LabelStudioError(
            f"no Label Studio API token: pass --api-key, set LABEL_STUDIO_API_KEY, or run "
            f"`workbench labelstudio serve` once to create {path}"
        )
    return token


def _read_private(path: Path) -> dict:
    """The credentials file's values ({} when it does not exist); refused when others may read it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise LabelStudioError(f"cannot read the Label Studio credentials file {path}: {e}") from e
    if mode & 0o077:
        raise LabelStudioError(
            f"the Label Studio credentials file {path} may be read by others (mode {mode & 0o777:o}): "
            f"run `chmod 600 {path}`"
        )
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LabelStudioError(f"cannot read the Label Studio credentials file {path}: {e}") from e
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise LabelStudioError(f"the Label Studio credentials file {path} must hold a JSON object of strings")
    return values


def _write_private(path: Path, values: dict) -> None:
    # A new 0600 file replaces the old one, whatever the old one's mode was.
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_text(path, json.dumps(values, indent=2), private=True)
    except OSError as e:
        raise LabelStudioError(f"cannot write the Label Studio credentials file {path}: {e}") from e


# Server -----------------------------------------------------------------------------------------


def files_root(home: Path) -> Path:
    """The server's document root for local files: a folder holding only a link to ``<home>/media``."""
    root = home / "labelstudio" / "files"
    link = root / MEDIA_LINK
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(Path("..", "..", "media"), target_is_directory=True)
    except OSError as e:
        raise LabelStudioError(f"cannot link the media folder into {root}: {e}") from e
    return root


class LabelStudioServer:
    """A Label Studio server on 127.0.0.1 serving the media of one workbench home.

    Runs ``label-studio start`` from its own virtualenv with a non-interactive admin, the legacy
    API token enabled, local files served from :func:`files_root`, and no calls home (version
    check, analytics and Sentry off). Use :meth:`start` / :meth:`stop` or ``with``.

    Args:
        home: the workbench home whose media the server shows.
        credentials: the admin account, created on the first start of an empty data folder
            (later starts keep the account the data folder already has).
        port: port on 127.0.0.1.
        data_dir: Label Studio's own data (database, uploads); default ``<home>/labelstudio/data``.
        binary: the ``label-studio`` executable; default ``$LABEL_STUDIO_BIN``, else
            ``.venv-labelstudio/bin/label-studio`` in the repository (``make labelstudio-env``).
    """

    def __init__(
        self,
        home: Path,
        credentials: Credentials,
        *,
        port: int = DEFAULT_PORT,
        data_dir: Path | None = None,
        binary: Path | None = None,
    ):
        self.home = Path(home)
        self.credentials = credentials
        self.port = port
        self.data_dir = Path(data_dir) if data_dir else self.home / "labelstudio" / "data"
        self.binary = Path(binary or os.environ.get("LABEL_STUDIO_BIN") or DEFAULT_BINARY)
        self.log_path = self.data_dir / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The server process's environment."""
        env = dict(os.environ)
        # The server runs in its own virtualenv; ours must not leak into its imports.
        for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
            env.pop(key, None)
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_USERNAME=self.credentials.username,
            LABEL_STUDIO_PASSWORD=self.credentials.password,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LABEL_STUDIO_USER_TOKEN=self.credentials.token,
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(files_root(self.home)),
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
        )
        return env

    def start(self, timeout_s: float = 300.0) -> None:
        """Start the server and wait until it answers (about 25 s on an empty data folder, then 3 s).

        Raises:
            LabelStudioError: no executable, the port is taken, the server exited, or it did not
                answer within ``timeout_s`` (the log's tail is quoted).
        """
        if not self.binary.is_file():
            raise LabelStudioError(
                f"no Label Studio executable at {self.binary}: run `make labelstudio-env` or set LABEL_STUDIO_BIN"
            )
        if not _port_free(self.port):
            raise LabelStudioError(f"port {self.port} on 127.0.0.1 is already in use: choose another port")
        env = self.environment()
        # It holds the admin's API token: private to its owner, also when it already existed.
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.chmod(0o700)
        command = [str(self.binary), "start", "--no-browser", "--internal-host", "127.0.0.1",
                   "--port", str(self.port), "--data-dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            # A session of its own, so that stop() ends the server with all its children.
            self.process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not _answers(self.url):
            if self.process.poll() is not None:
                raise LabelStudioError(
                    f"Label Studio exited with code {self.process.returncode} while starting; "
                    f"{self.log_path} ends with: {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise LabelStudioError(
                    f"Label Studio did not answer on {self.url} within {timeout_s:.0f} s; "
                    f"{self.log_path} ends with: {self._log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server and its children (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> LabelStudioServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # As the server binds: a port left in TIME_WAIT by an earlier run counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
