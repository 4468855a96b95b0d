"""Label Studio: a local server, a small client, and the push / pull sync with the store.

Pairs go out as tasks of one project: two images side by side, a Pairwise tag (click the better
image) and a Choices for left / right / tie / both bad (hotkeys 1-4), with the sides drawn at
random and the side shown left recorded in the task data and in ``labelstudio_tasks``.
Annotations come back as judgments (source ``labelstudio``), merged idempotently by annotation
id and ``updated_at``. A model's judgments can go out as Label Studio predictions (suggestions);
they never come back as judgments.

Images are served by Label Studio from the media folder, never copied into tasks. Label Studio
refuses a local storage whose path equals its document root, so the document root is a folder
that holds only a link to the media folder (``<home>/labelstudio/files/media``), and the
project's local storage is that link: nothing else of the home can be served. Task data names
an image as ``/data/local-files/?d=media/<aa>/<sha>.<ext>``.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import duckdb
import httpx
import pyarrow as pa
from tqdm import tqdm

from datastore.errors import StoreError
from datastore.records import NewJudgment, Outcome, ensure_annotator, insert_judgments
from datastore.store import Store
from labeling.errors import LabelingError

PROJECT_TITLE = "workbench pairs"
DEFAULT_PORT = 8080
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_BINARY = Path(__file__).resolve().parents[1] / ".venv-labelstudio" / "bin" / "label-studio"
MEDIA_LINK = "media"
"""Name of the link to the media folder inside the document root; the first part of every image path."""

LABEL_CONFIG = """<View>
  <Header value="$prompt"/>
  <View style="display: flex; gap: 16px;">
    <View style="flex: 1;"><Image name="left" value="$left"/></View>
    <View style="flex: 1;"><Image name="right" value="$right"/></View>
  </View>
  <Pairwise name="pw" toName="left,right"/>
  <Choices name="choice" toName="left" choice="single-radio" showInline="true">
    <Choice value="left" hotkey="1"/>
    <Choice value="right" hotkey="2"/>
    <Choice value="tie" hotkey="3"/>
    <Choice value="both bad" hotkey="4"/>
  </Choices>
</View>"""
"""The project's labeling interface. The Choices points at one image only: a Choices whose
toName names two images loses data on export. Ties and both-bad exist only in the Choices,
since the Pairwise tag knows left and right only."""

Side = Literal["left", "right", "tie", "both_bad"]
SIDE_OF_CHOICE: dict[str, Side] = {"left": "left", "right": "right", "tie": "tie", "both bad": "both_bad"}
CHOICE_OF_SIDE: dict[Side, str] = {side: choice for choice, side in SIDE_OF_CHOICE.items()}


class LabelStudioError(LabelingError, StoreError):
    """Label Studio is unreachable, refused the token, or answered something unexpected; or a
    server could not start. Names the server, project, task or annotation at fault."""


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
    # A new file from mkstemp (mode 0600) replaces the old one, whatever the old one's mode was.
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(values, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
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


# Client -----------------------------------------------------------------------------------------


class LabelStudioClient:
    """The few Label Studio calls the workbench uses, over the SDK client.

    Every call turns a transport error, a refused token or an error answer into
    :class:`LabelStudioError` naming the server and what was being done.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8080``.
        api_key: a legacy token or a personal access token.
        timeout_s: per request; imports and exports of many tasks take a while.
    """

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 300.0):
        from label_studio_sdk import LabelStudio  # imported here: it takes most of the CLI's start-up

        self.url = url.rstrip("/")
        self._sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout_s)

    @contextmanager
    def _request(self, what: str) -> Iterator[None]:
        from label_studio_sdk.core.api_error import ApiError

        try:
            yield
        except ApiError as e:
            if e.status_code in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the API token (HTTP {e.status_code}) while trying to {what}: "
                    "check --api-key / LABEL_STUDIO_API_KEY"
                ) from e
            detail = json.dumps(e.body)[:300] if e.body is not None else ""
            raise LabelStudioError(f"Label Studio at {self.url} could not {what}: HTTP {e.status_code} {detail}") from e
        except httpx.HTTPError as e:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} to {what} ({e}): is it running? (`workbench labelstudio serve`)"
            ) from e
        except ValueError as e:  # an answer that is not Label Studio's JSON
            raise LabelStudioError(f"{self.url} did not answer like Label Studio while trying to {what}: {e}") from e

    def find_project(self, title: str) -> int | None:
        """The id of the project called exactly ``title``, or None."""
        with self._request(f"look up project {title!r}"):
            ids = [p.id for p in self._sdk.projects.list(title=title, page_size=100) if p.title == title]
        return min(ids) if ids else None

    def ensure_project(self, title: str, label_config: str) -> int:
        """The id of the project called ``title``, created with ``label_config`` if missing, else updated to it."""
        project_id = self.find_project(title)
        if project_id is None:
            with self._request(f"create project {title!r}"):
                return self._sdk.projects.create(title=title, label_config=label_config).id
        with self._request(f"read project {project_id}"):
            current = self._sdk.projects.get(project_id).label_config
        if current != label_config:
            with self._request(f"update the labeling interface of project {project_id}"):
                self._sdk.projects.update(project_id, label_config=label_config)
        return project_id

    def ensure_local_storage(self, project_id: int, path: Path) -> int:
        """The id of the project's local import storage on ``path``, created if missing."""
        with self._request(f"list the local storages of project {project_id}"):
            storages = self._sdk.import_storage.local.list(project=project_id)
        for storage in storages:
            if storage.path == str(path):
                return storage.id
        with self._request(f"create a local storage on {path} for project {project_id}"):
            return self._sdk.import_storage.local.create(project=project_id, path=str(path), title="workbench media").id

    def import_tasks(self, project_id: int, tasks: Sequence[dict]) -> list[int]:
        """Create tasks (each ``{"data": ..., "predictions": [...]}``); their ids in input order."""
        with self._request(f"import {len(tasks)} tasks into project {project_id}"):
            # No retry: a retried import whose first try went through would duplicate the tasks.
            answer = self._sdk.projects.import_tasks(
                project_id, request=list(tasks), return_task_ids=True, request_options={"max_retries": 0}
            )
        if answer.task_ids is None or len(answer.task_ids) != len(tasks):
            raise LabelStudioError(
                f"Label Studio at {self.url} created {answer.task_count} of {len(tasks)} tasks in project {project_id}"
            )
        return list(answer.task_ids)

    def list_tasks(self, project_id: int) -> list[dict]:
        """Every task of a project as ``{"id", "data"}``, without annotations."""
        with self._request(f"list the tasks of project {project_id}"):
            return [
                {"id": t.id, "data": t.data}
                for t in self._sdk.tasks.list(project=project_id, fields="task_only", page_size=1000)
            ]

    def annotated_tasks(self, project_id: int) -> list[dict]:
        """Every task of a project that has an annotation, with its annotations, as Label Studio's JSON export.

        One export request rather than paging the task list with annotations: about 12 s against
        60 s for 10,000 annotated tasks (benchmarks/RESULTS.md).
        """
        with self._request(f"export the annotations of project {project_id}"):
            body = b"".join(self._sdk.projects.exports.download_sync(project_id, export_type="JSON"))
            return json.loads(body)

    def user_emails(self) -> dict[int, str]:
        """The e-mail of every user, by user id."""
        with self._request("list users"):
            return {u.id: u.email for u in self._sdk.users.list()}


# Mappers: pure functions between store records and Label Studio JSON ----------------------------


@dataclass(frozen=True)
class Suggestion:
    """A model's judgment of a pair, shown in Label Studio as a prediction.

    Attributes:
        agent: the AI annotator's name, e.g. ``shapes-oracle@1``; the prediction's model version.
        outcome: the model's answer.
        score_a, score_b: the scorer's scores of the pair's images, when known.
    """

    agent: str
    outcome: Outcome
    score_a: float | None = None
    score_b: float | None = None


@dataclass(frozen=True)
class PairToPush:
    """A pair as a task needs it.

    Attributes:
        path_a, path_b: the images' paths relative to the media folder.
    """

    pair_id: int
    prompt: str
    path_a: str
    path_b: str
    suggestion: Suggestion | None = None


def local_file_url(media_path: str) -> str:
    """The task-data URL of an image given its path relative to the media folder."""
    return "/data/local-files/?d=" + quote(f"{MEDIA_LINK}/{media_path}", safe="/")


def side_of(outcome: Outcome, left_image: Literal["a", "b"]) -> Side:
    """Where an outcome is on screen when ``left_image`` is shown left."""
    if outcome in ("tie", "both_bad"):
        return outcome
    return "left" if outcome == left_image else "right"


def outcome_of(side: Side, left_image: Literal["a", "b"]) -> Outcome:
    """The outcome of an on-screen answer when ``left_image`` was shown left."""
    if side in ("tie", "both_bad"):
        return side
    other = "b" if left_image == "a" else "a"
    return left_image if side == "left" else other


def choice_region(side: Side) -> dict:
    """The Choices result of an answer."""
    return {"from_name": "choice", "to_name": "left", "type": "choices", "value": {"choices": [CHOICE_OF_SIDE[side]]}}


def task_for_pair(pair: PairToPush, left_image: Literal["a", "b"]) -> dict:
    """The Label Studio task of a pair with ``left_image`` shown left, and its suggestion if any."""
    left, right = (pair.path_a, pair.path_b) if left_image == "a" else (pair.path_b, pair.path_a)
    task: dict = {
        "data": {
            "prompt": pair.prompt,
            "left": local_file_url(left),
            "right": local_file_url(right),
            "pair_id": pair.pair_id,
            "left_image": left_image,
        }
    }
    s = pair.suggestion
    if s is not None:
        prediction: dict = {"model_version": s.agent, "result": [choice_region(side_of(s.outcome, left_image))]}
        if s.score_a is not None and s.score_b is not None:
            # Bradley-Terry probability that the two images differ in the suggested direction.
            prediction["score"] = round(1.0 / (1.0 + math.exp(-abs(s.score_a - s.score_b))), 6)
        task["predictions"] = [prediction]
    return task


def side_from_result(result: Sequence[dict]) -> Side | None:
    """The answer in an annotation's result: the Choices when given, else the clicked image.

    The Choices wins over the Pairwise click because only it can say tie or both bad.

    Raises:
        LabelStudioError: a Choices value or a Pairwise selection that is not ours.
    """
    chosen: Side | None = None
    clicked: Side | None = None
    for region in result:
        if region["type"] == "choices" and region["from_name"] == "choice":
            values = region["value"]["choices"]
            if len(values) != 1 or values[0] not in SIDE_OF_CHOICE:
                raise LabelStudioError(f"unexpected choice {values!r}; expected one of {sorted(SIDE_OF_CHOICE)}")
            chosen = SIDE_OF_CHOICE[values[0]]
        elif region["type"] == "pairwise":
            selected = region["value"]["selected"]
            if selected not in ("left", "right"):
                raise LabelStudioError(f"unexpected pairwise selection {selected!r}")
            clicked = selected
    return chosen or clicked


@dataclass(frozen=True)
class Answer:
    """One Label Studio annotation of a pushed pair, mapped back to the store's terms.

    Attributes:
        user_id: the Label Studio user who answered.
        left_image: the image shown left, from the task data.
        shown_at: when the task was opened (answered_at minus the lead time), naive UTC.
        answered_at: when the annotation was submitted, naive UTC.
        updated_at: the annotation's ``updated_at`` as Label Studio wrote it.
    """

    annotation_id: int
    task_id: int
    pair_id: int
    user_id: int
    outcome: Outcome
    left_image: Literal["a", "b"]
    shown_at: datetime | None
    answered_at: datetime
    updated_at: str


def answer_from_annotation(task: dict, annotation: dict) -> Answer | None:
    """Map one annotation of an exported task; None when it was skipped or holds no answer.

    Raises:
        LabelStudioError: the task data or the annotation is not what :func:`task_for_pair`
            and :data:`LABEL_CONFIG` produce (names the task and annotation).
    """
    where = f"annotation {annotation.get('id')} of task {task.get('id')}"
    try:
        if annotation["was_cancelled"]:
            return None
        side = side_from_result(annotation["result"])
        if side is None:
            return None
        left_image = task["data"]["left_image"]
        if left_image not in ("a", "b"):
            raise LabelStudioError(f"left_image must be 'a' or 'b', got {left_image!r}")
        answered_at = _naive_utc(annotation["created_at"])
        lead_time = annotation["lead_time"]
        return Answer(
            annotation_id=int(annotation["id"]),
            task_id=int(task["id"]),
            pair_id=int(task["data"]["pair_id"]),
            user_id=int(annotation["completed_by"]),
            outcome=outcome_of(side, left_image),
            left_image=left_image,
            shown_at=None if lead_time is None else answered_at - timedelta(seconds=float(lead_time)),
            answered_at=answered_at,
            updated_at=str(annotation["updated_at"]),
        )
    except LabelStudioError as e:
        raise LabelStudioError(f"{where}: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise LabelStudioError(f"{where}: unexpected JSON ({type(e).__name__}: {e})") from e


def _naive_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def annotator_name(email: str) -> str:
    """The workbench annotator of a Label Studio user."""
    return f"labelstudio:{email}"


# Sync -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushReport:
    """What one :func:`push` did.

    Attributes:
        pushed: pairs sent as new tasks.
        suggested: of those, tasks that carry a suggestion.
        remaining: pairs of the selection still not in the project.
    """

    project_id: int
    pushed: int
    suggested: int
    remaining: int


_UNPUSHED = """
SELECT p.id, pr.text, ia.path, ib.path, s.outcome, s.score_a, s.score_b, count(*) OVER () AS pending
FROM pairs p
JOIN prompts pr ON pr.id = p.prompt_id
JOIN images ia ON ia.id = p.image_a
JOIN images ib ON ib.id = p.image_b
LEFT JOIN (
    SELECT pair_id, outcome, score_a, score_b FROM judgments
    WHERE annotator_id = $agent AND NOT withdrawn
    QUALIFY row_number() OVER (PARTITION BY pair_id ORDER BY id DESC) = 1
) s ON s.pair_id = p.id
WHERE NOT EXISTS (SELECT 1 FROM labelstudio_tasks t WHERE t.project_id = $project AND t.pair_id = p.id)
  AND ($pairs IS NULL OR list_contains($pairs, p.id))
ORDER BY p.id
LIMIT $limit
"""


def push(
    store: Store,
    client: LabelStudioClient,
    *,
    project: str = PROJECT_TITLE,
    pair_ids: Sequence[int] | None = None,
    limit: int | None = None,
    suggestions_from: str | None = None,
    batch_size: int = 1000,
    seed: int | None = None,
    show_progress: bool = False,
) -> PushReport:
    """Send the pairs not yet in the project as tasks, creating or updating the project first.

    Each batch is imported in one request and recorded in ``labelstudio_tasks`` (task id and
    side shown left) in one store transaction, so a failure keeps what earlier batches did.
    Images are referenced through the project's local storage, never inlined.

    Args:
        project: the project's title.
        pair_ids: push only these pairs (default: every pair).
        limit: push at most this many pairs, lowest ids first.
        suggestions_from: an AI annotator (e.g. ``shapes-oracle@1``, see ``workbench label ai``)
            whose judgments go with the tasks as predictions.
        batch_size: tasks per import request.
        seed: seeds the side each image is shown on (default: fresh randomness).
        show_progress: draw a progress bar.

    Raises:
        LabelStudioError: bad arguments, an unknown AI annotator, or a server error (the store
            keeps the batches that were recorded before it).
    """
    if limit is not None and limit < 0:
        raise LabelStudioError(f"limit must be >= 0, got {limit}")
    if batch_size < 1:
        raise LabelStudioError(f"batch_size must be >= 1, got {batch_size}")
    project_id = client.ensure_project(project, LABEL_CONFIG)
    client.ensure_local_storage(project_id, files_root(store.home) / MEDIA_LINK)
    with store.read() as con:
        agent = _ai_annotator(con, suggestions_from) if suggestions_from else None
        selected = con.execute(_UNPUSHED, {
            "agent": agent, "project": project_id, "pairs": None if pair_ids is None else list(pair_ids), "limit": limit,
        }).fetchall()
    pending = selected[0][7] if selected else 0
    rng = random.Random(seed)
    suggested = 0
    with tqdm(total=len(selected), unit="task", desc="push", disable=not show_progress) as bar:
        for start in range(0, len(selected), batch_size):
            batch = selected[start : start + batch_size]
            pairs = [
                PairToPush(
                    pair_id=r[0], prompt=r[1], path_a=r[2], path_b=r[3],
                    suggestion=None if r[4] is None else Suggestion(suggestions_from, r[4], r[5], r[6]),
                )
                for r in batch
            ]
            sides = [rng.choice(("a", "b")) for _ in pairs]
            task_ids = client.import_tasks(project_id, [task_for_pair(p, s) for p, s in zip(pairs, sides, strict=True)])
            record = pa.table({
                "project_id": pa.array([project_id] * len(pairs), pa.int64()),
                "task_id": pa.array(task_ids, pa.int64()),
                "pair_id": pa.array([p.pair_id for p in pairs], pa.int64()),
                "left_image": pa.array(sides, pa.string()),
            })
            try:
                with store.write() as con:
                    con.register("pushed_tasks", record)
                    try:
                        con.execute(
                            "INSERT INTO labelstudio_tasks (project_id, task_id, pair_id, left_image) "
                            "SELECT project_id, task_id, pair_id, left_image FROM pushed_tasks"
                        )
                    finally:
                        con.unregister("pushed_tasks")
            except duckdb.ConstraintException as e:
                raise LabelStudioError(
                    f"another push sent some of pairs {pairs[0].pair_id}..{pairs[-1].pair_id} to project {project_id} "
                    f"meanwhile: delete the duplicate tasks {task_ids[0]}..{task_ids[-1]} in Label Studio"
                ) from e
            suggested += sum(p.suggestion is not None for p in pairs)
            bar.update(len(batch))
    return PushReport(project_id=project_id, pushed=len(selected), suggested=suggested, remaining=pending - len(selected))


def _ai_annotator(con: duckdb.DuckDBPyConnection, name: str) -> int:
    rows = con.execute("SELECT id, kind FROM annotators WHERE name = ?", [name]).fetchall()
    if not rows or rows[0][1] != "ai":
        known = [r[0] for r in con.execute("SELECT name FROM annotators WHERE kind = 'ai' ORDER BY name").fetchall()]
        raise LabelStudioError(
            f"no AI annotator {name!r} (known: {', '.join(known) or 'none'}); "
            "judge the pairs first with `workbench label ai`"
        )
    return rows[0][0]


@dataclass(frozen=True)
class PullReport:
    """What one :func:`pull` did.

    Attributes:
        new: judgments added for annotations seen for the first time.
        updated: judgments rewritten because their annotation changed (or came back).
        withdrawn: judgments marked withdrawn because their annotation is gone or skipped.
        unchanged: annotations already merged as they are.
        unanswered: annotations skipped or submitted without an answer.
        foreign: answers on tasks this store did not push (left alone).
    """

    new: int
    updated: int
    withdrawn: int
    unchanged: int
    unanswered: int
    foreign: int


def pull(store: Store, client: LabelStudioClient, *, project: str = PROJECT_TITLE) -> PullReport:
    """Merge the project's annotations into the store's judgments (source ``labelstudio``).

    Idempotent: judgments are keyed by annotation id (``external_id``). A changed ``updated_at``
    rewrites the judgment; an annotation that is gone, skipped or emptied withdraws it (kept for
    audit). Each Label Studio user is the annotator ``labelstudio:<email>``. Everything is read
    from the server first, then merged in one store transaction, so a server error leaves the
    store as it was.

    Raises:
        LabelStudioError: no such project, a server error, an annotation this module cannot
            read, or a task whose data disagrees with what was pushed.
    """
    project_id = client.find_project(project)
    if project_id is None:
        raise LabelStudioError(f"no project {project!r} at {client.url}: push pairs first")
    tasks = client.annotated_tasks(project_id)
    emails = client.user_emails()
    answers: list[Answer] = []
    unanswered = 0
    for task in tasks:
        for annotation in task["annotations"]:
            answer = answer_from_annotation(task, annotation)
            if answer is None:
                unanswered += 1
                continue
            if answer.user_id not in emails:
                raise LabelStudioError(f"annotation {answer.annotation_id}: Label Studio has no user {answer.user_id}")
            answers.append(answer)
    with store.write() as con:
        return _merge(con, project_id, answers, emails, unanswered)


def _merge(
    con: duckdb.DuckDBPyConnection, project_id: int, answers: list[Answer], emails: dict[int, str], unanswered: int
) -> PullReport:
    pushed = {
        task_id: (pair_id, left)
        for task_id, pair_id, left in con.execute(
            "SELECT task_id, pair_id, left_image FROM labelstudio_tasks WHERE project_id = ?", [project_id]
        ).fetchall()
    }
    ours = []
    for a in answers:
        if a.task_id not in pushed:
            continue
        if pushed[a.task_id] != (a.pair_id, a.left_image):
            pair_id, left = pushed[a.task_id]
            raise LabelStudioError(
                f"task {a.task_id} of project {project_id}: its data says pair {a.pair_id} with {a.left_image!r} "
                f"on the left, but it was pushed as pair {pair_id} with {left!r} on the left"
            )
        ours.append(a)
    existing = {
        ext: (judgment_id, updated_at, withdrawn)
        for judgment_id, ext, updated_at, withdrawn in con.execute(
            "SELECT j.id, j.external_id, j.external_updated_at, j.withdrawn FROM judgments j "
            "JOIN labelstudio_annotations a ON a.judgment_id = j.id WHERE a.project_id = ?",
            [project_id],
        ).fetchall()
    }
    gold = {
        row[0]
        for row in con.execute(
            "SELECT p.id FROM pairs p JOIN labelstudio_tasks t ON t.pair_id = p.id "
            "WHERE t.project_id = ? AND p.gold_outcome IS NOT NULL",
            [project_id],
        ).fetchall()
    }
    annotators = {
        user_id: ensure_annotator(con, annotator_name(emails[user_id]), kind="human")
        for user_id in sorted({a.user_id for a in ours})
    }
    judgments = {
        str(a.annotation_id): NewJudgment(
            pair_id=a.pair_id,
            annotator_id=annotators[a.user_id],
            source="labelstudio",
            outcome=a.outcome,
            left_image=a.left_image,
            shown_at=a.shown_at,
            answered_at=a.answered_at,
            is_gold=a.pair_id in gold,
            external_id=str(a.annotation_id),
            external_updated_at=a.updated_at,
        )
        for a in ours
    }
    task_of = {str(a.annotation_id): a.task_id for a in ours}
    new = [j for ext, j in judgments.items() if ext not in existing]
    changed = [
        (existing[ext][0], j)
        for ext, j in judgments.items()
        if ext in existing and (existing[ext][1] != j.external_updated_at or existing[ext][2])
    ]
    gone = [jid for ext, (jid, _, withdrawn) in existing.items() if ext not in judgments and not withdrawn]
    new_ids = insert_judgments(con, new)
    origins = pa.table({
        "project_id": pa.array([project_id] * len(new), pa.int64()),
        "annotation_id": pa.array([int(j.external_id) for j in new], pa.int64()),
        "task_id": pa.array([task_of[j.external_id] for j in new], pa.int64()),
        "judgment_id": pa.array(new_ids, pa.int64()),
    })
    con.register("new_origins", origins)
    try:
        con.execute("INSERT INTO labelstudio_annotations SELECT * FROM new_origins")
    finally:
        con.unregister("new_origins")
    now = datetime.now(UTC).replace(tzinfo=None)
    if changed:
        rows = pa.table({
            "id": pa.array([jid for jid, _ in changed], pa.int64()),
            "annotator_id": pa.array([j.annotator_id for _, j in changed], pa.int64()),
            "outcome": pa.array([j.outcome for _, j in changed], pa.string()),
            "left_image": pa.array([j.left_image for _, j in changed], pa.string()),
            "shown_at": pa.array([j.shown_at for _, j in changed], pa.timestamp("us")),
            "answered_at": pa.array([j.answered_at for _, j in changed], pa.timestamp("us")),
            "external_updated_at": pa.array([j.external_updated_at for _, j in changed], pa.string()),
        })
        con.register("changed_judgments", rows)
        try:
            con.execute(
                "UPDATE judgments SET annotator_id = c.annotator_id, outcome = c.outcome, left_image = c.left_image, "
                "shown_at = c.shown_at, answered_at = c.answered_at, external_updated_at = c.external_updated_at, "
                "withdrawn = false, updated_at = ? FROM changed_judgments c WHERE judgments.id = c.id",
                [now],
            )
        finally:
            con.unregister("changed_judgments")
    if gone:
        con.execute("UPDATE judgments SET withdrawn = true, updated_at = ? WHERE list_contains(?, id)", [now, gone])
    return PullReport(
        new=len(new),
        updated=len(changed),
        withdrawn=len(gone),
        unchanged=len(judgments) - len(new) - len(changed),
        unanswered=unanswered,
        foreign=len(answers) - len(ours),
    )
