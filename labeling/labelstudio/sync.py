"""Push pairs to a Label Studio project as tasks, and pull its annotations back as judgments.

Each pushed task is recorded in ``labelstudio_tasks`` with the side shown left. Annotations come
back as judgments (source ``labelstudio``), merged idempotently by annotation id and
``updated_at``. A model's judgments can go out as predictions (suggestions); they never come
back as judgments.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
from tqdm import tqdm

from datastore.records import NewJudgment, ensure_annotator, insert_judgments
from datastore.store import Store
from labeling.labelstudio.client import LabelStudioClient, LabelStudioError
from labeling.labelstudio.mapping import (
    LABEL_CONFIG,
    Answer,
    PairToPush,
    Suggestion,
    annotator_name,
    answer_from_annotation,
    task_for_pair,
)
from labeling.labelstudio.server import MEDIA_LINK, files_root

PROJECT_TITLE = "workbench pairs"


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
SELECT p.id, p.prompt, p.path_a, p.path_b, s.outcome, s.score_a, s.score_b, count(*) OVER () AS pending
FROM pair_media p
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
