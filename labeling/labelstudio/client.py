"""The few Label Studio calls the workbench uses, and the error every Label Studio failure raises."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from datastore.errors import StoreError
from labeling.errors import LabelingError


class LabelStudioError(LabelingError, StoreError):
    """Label Studio is unreachable, refused the token, or answered something unexpected; or a
    server could not start. Names the server, project, task or annotation at fault."""


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
