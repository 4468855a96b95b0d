"""Label Studio: the mappers on literal JSON, and push / pull against a real server.

The server comes from ``.venv-labelstudio`` (``make labelstudio-env``) and runs once for the
session on a free 127.0.0.1 port with a temporary data folder; its first start takes about 25 s.
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from label_studio_sdk import LabelStudio
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from datastore.records import (
    ImageRow,
    NewJudgment,
    NewPair,
    ensure_annotator,
    insert_images,
    insert_judgments,
    insert_pairs,
    upsert_prompts,
)
from datastore.store import Store
from labeling.labelstudio.client import LabelStudioClient, LabelStudioError
from labeling.labelstudio.mapping import (
    LABEL_CONFIG,
    PairToPush,
    Suggestion,
    answer_from_annotation,
    task_for_pair,
)
from labeling.labelstudio.server import Credentials, LabelStudioServer, api_token, load_credentials
from labeling.labelstudio.sync import pull, push
from workbench.cli import app

runner = CliRunner()
OTHER = {"a": "b", "b": "a"}


# Mappers on literal JSON ------------------------------------------------------------------------


def test_task_for_pair_puts_the_recorded_side_left_and_links_media() -> None:
    pair = PairToPush(pair_id=7, prompt="a red circle", path_a="ab/aaa.png", path_b="cd/bbb.png")
    assert task_for_pair(pair, "a") == {
        "data": {
            "prompt": "a red circle",
            "left": "/data/local-files/?d=media/ab/aaa.png",
            "right": "/data/local-files/?d=media/cd/bbb.png",
            "pair_id": 7,
            "left_image": "a",
        }
    }
    flipped = task_for_pair(pair, "b")["data"]
    assert flipped["left"].endswith("cd/bbb.png") and flipped["right"].endswith("ab/aaa.png")
    assert flipped["left_image"] == "b"


def test_suggestion_becomes_a_prediction_on_the_side_shown() -> None:
    """Image a wins with scores 2.0 vs 0.5: sigmoid(1.5) = 0.817574; shown right when b is left."""
    pair = PairToPush(7, "p", "ab/a.png", "cd/b.png", Suggestion("oracle@1", "a", 2.0, 0.5))
    (prediction,) = task_for_pair(pair, "b")["predictions"]
    assert prediction == {
        "model_version": "oracle@1",
        "score": 0.817574,
        "result": [{"from_name": "choice", "to_name": "left", "type": "choices", "value": {"choices": ["right"]}}],
    }
    tie = PairToPush(8, "p", "ab/a.png", "cd/b.png", Suggestion("oracle@1", "tie"))
    assert task_for_pair(tie, "a")["predictions"] == [
        {"model_version": "oracle@1", "result": [
            {"from_name": "choice", "to_name": "left", "type": "choices", "value": {"choices": ["tie"]}}
        ]}
    ]


EXPORTED_TASK = json.loads(
    """{"id": 41, "data": {"prompt": "p", "left": "/data/local-files/?d=media/cd/b.png",
        "right": "/data/local-files/?d=media/ab/a.png", "pair_id": 7, "left_image": "b"},
        "annotations": []}"""
)


def _annotation(result: str, **extra: object) -> dict:
    annotation = json.loads(
        '{"id": 900, "completed_by": 3, "was_cancelled": false, "lead_time": 5.5,'
        ' "created_at": "2025-03-01T10:00:05.500000Z", "updated_at": "2025-03-01T10:02:00.000000Z",'
        f' "result": {result}}}'
    )
    return {**annotation, **extra}


CHOICE = '[{{"from_name": "choice", "to_name": "left", "type": "choices", "value": {{"choices": ["{}"]}}}}]'
CLICK = '[{{"from_name": "pw", "to_name": "left,right", "type": "pairwise", "value": {{"selected": "{}"}}}}]'


@pytest.mark.parametrize(
    ("result", "outcome"),
    [
        (CHOICE.format("left"), "b"),  # b was shown left
        (CHOICE.format("right"), "a"),
        (CHOICE.format("tie"), "tie"),
        (CHOICE.format("both bad"), "both_bad"),
        (CLICK.format("left"), "b"),
        (CLICK.format("right"), "a"),
        # Both given: the Choices wins, since only it can say tie.
        (CHOICE.format("tie")[:-1] + ", " + CLICK.format("left")[1:], "tie"),
    ],
)
def test_annotation_maps_back_through_the_left_side(result: str, outcome: str) -> None:
    answer = answer_from_annotation(EXPORTED_TASK, _annotation(result))
    assert answer is not None
    assert (answer.outcome, answer.left_image, answer.pair_id, answer.task_id) == (outcome, "b", 7, 41)
    assert (answer.annotation_id, answer.user_id) == (900, 3)
    assert answer.answered_at == datetime(2025, 3, 1, 10, 0, 5, 500000)
    assert answer.shown_at == datetime(2025, 3, 1, 10, 0, 0)
    assert answer.updated_at == "2025-03-01T10:02:00.000000Z"


def test_skipped_or_empty_annotation_is_no_answer() -> None:
    assert answer_from_annotation(EXPORTED_TASK, _annotation("[]")) is None
    assert answer_from_annotation(EXPORTED_TASK, _annotation(CHOICE.format("left"), was_cancelled=True)) is None
    no_lead = answer_from_annotation(EXPORTED_TASK, _annotation(CHOICE.format("left"), lead_time=None))
    assert no_lead is not None and no_lead.shown_at is None


def test_unexpected_annotation_json_names_the_annotation() -> None:
    with pytest.raises(LabelStudioError, match=r"annotation 900 of task 41: unexpected choice \['maybe'\]"):
        answer_from_annotation(EXPORTED_TASK, _annotation(CHOICE.format("maybe")))
    with pytest.raises(LabelStudioError, match="annotation 900 of task 41: unexpected JSON"):
        answer_from_annotation({"id": 41, "data": {}}, _annotation(CHOICE.format("left")))
    with pytest.raises(LabelStudioError, match="annotation 900 of task 41: left_image must be"):
        task = {**EXPORTED_TASK, "data": {**EXPORTED_TASK["data"], "left_image": "c"}}
        answer_from_annotation(task, _annotation(CHOICE.format("left")))


def test_label_config_keeps_the_choices_on_one_image() -> None:
    assert '<Pairwise name="pw" toName="left,right"/>' in LABEL_CONFIG
    assert '<Choices name="choice" toName="left"' in LABEL_CONFIG
    assert [f'hotkey="{k}"' in LABEL_CONFIG for k in "1234"] == [True] * 4


def test_credentials_from_environment_file_or_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        monkeypatch.delenv(env, raising=False)
    path = tmp_path / "config" / "labelstudio.json"
    with pytest.raises(LabelStudioError, match="no Label Studio username, password, token"):
        load_credentials(path)
    with pytest.raises(LabelStudioError, match="no Label Studio API token"):
        api_token(path)
    made = load_credentials(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(made.token) == 40 and made.token not in made.source and made.password not in made.source
    assert made.source == f"username, password, token from {path} (new)"
    assert load_credentials(path) == Credentials(made.username, made.password, made.token,
                                                 f"username, password, token from {path}")
    assert api_token(path) == made.token
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", "from-env-123")
    again = load_credentials(path)
    assert again.token == "from-env-123"
    assert again.source == f"username, password from {path}; token from $LABEL_STUDIO_USER_TOKEN"
    assert api_token(path) == "from-env-123"
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", "short")
    with pytest.raises(LabelStudioError, match="6 to 40 characters"):
        load_credentials(path)


# A real server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ls_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, list[int]]:
    """A store with 20 pairs of drawn images, pair 1 gold."""
    store = Store.open(tmp_path_factory.mktemp("labelstudio") / "home")
    images = []
    for i in range(40):
        im = Image.new("RGB", (32, 32), "black")
        ImageDraw.Draw(im).ellipse((4 + i % 8, 4, 20 + i % 8, 20 + i // 8), fill=(60 + 4 * i, 200 - 3 * i, 90))
        images.append(store.media.put_image(im))
    with store.write() as con:
        prompts = upsert_prompts(con, [f"a shape, number {k}" for k in range(20)])
        insert_images(con, [ImageRow(im) for im in images])
        pair_ids = insert_pairs(con, [
            NewPair(prompts[f"a shape, number {k}"], images[2 * k].id, images[2 * k + 1].id,
                    gold_outcome="a" if k == 0 else None)
            for k in range(20)
        ])
    return store, pair_ids


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory: pytest.TempPathFactory, ls_store: tuple[Store, list[int]]) -> Iterator[LabelStudioServer]:
    credentials = Credentials("admin@example.com", secrets.token_urlsafe(12), secrets.token_hex(20), "test")
    server = LabelStudioServer(
        ls_store[0].home, credentials, port=_free_port(), data_dir=tmp_path_factory.mktemp("labelstudio-data")
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_servers_data_folder_is_private(ls_server: LabelStudioServer) -> None:
    # The fixture's folder existed before the start (made by pytest with the default mode).
    assert ls_server.data_dir.stat().st_mode & 0o777 == 0o700


def _sdk(server: LabelStudioServer) -> LabelStudio:
    return LabelStudio(base_url=server.url, api_key=server.credentials.token)


def _state(store: Store) -> dict[str, list]:
    with store.read() as con:
        return {
            table: con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
            for table in ("judgments", "annotators", "labelstudio_tasks", "labelstudio_annotations")
        }


@pytest.mark.slow
def test_push_annotate_pull_edit_delete(ls_server: LabelStudioServer, ls_store: tuple[Store, list[int]]) -> None:
    store, pair_ids = ls_store
    client = LabelStudioClient(ls_server.url, ls_server.credentials.token)
    report = push(store, client, project="round trip", seed=0)
    assert (report.pushed, report.remaining, report.suggested) == (20, 0, 0)
    assert push(store, client, project="round trip").pushed == 0

    with store.read() as con:
        pushed = {t: (p, left) for t, p, left in con.execute(
            "SELECT task_id, pair_id, left_image FROM labelstudio_tasks WHERE project_id = ?", [report.project_id]
        ).fetchall()}
        paths = {p: {"a": a, "b": b} for p, a, b in con.execute(
            "SELECT p.id, ia.path, ib.path FROM pairs p JOIN images ia ON ia.id = p.image_a "
            "JOIN images ib ON ib.id = p.image_b"
        ).fetchall()}
    tasks = sorted(client.list_tasks(report.project_id), key=lambda t: t["id"])
    assert len(tasks) == 20 and sorted(p for p, _ in pushed.values()) == sorted(pair_ids)
    for task in tasks:
        pair_id, left = pushed[task["id"]]
        assert task["data"]["pair_id"] == pair_id and task["data"]["left_image"] == left
        assert task["data"]["left"] == f"/data/local-files/?d=media/{paths[pair_id][left]}"
        assert task["data"]["right"] == f"/data/local-files/?d=media/{paths[pair_id][OTHER[left]]}"
    assert {left for _, left in pushed.values()} == {"a", "b"}

    auth = {"Authorization": f"Token {ls_server.credentials.token}"}
    served = httpx.get(ls_server.url + tasks[0]["data"]["left"], headers=auth)
    pair_id, left = pushed[tasks[0]["id"]]
    assert served.status_code == 200 and served.content == store.media.read_bytes(paths[pair_id][left])
    outside = httpx.get(ls_server.url + "/data/local-files/?d=media/../../workbench.duckdb", headers=auth)
    assert outside.status_code != 200

    sdk = _sdk(ls_server)
    other = sdk.users.create(username="ann2", email="ann2@example.com", password=secrets.token_urlsafe(12))
    admin = next(u.id for u in sdk.users.list() if u.email == "admin@example.com")
    choices = ["left", "right", "tie", "both bad", None]  # None: only the Pairwise click on the right image
    expected = {}
    annotation_of = {}
    for i, task in enumerate(tasks):
        pair_id, left = pushed[task["id"]]
        choice = choices[i % 5]
        if choice is None:
            result = json.loads(CLICK.format("right"))
        else:
            result = json.loads(CHOICE.format(choice))
        user = admin if i % 2 == 0 else other.id
        created = sdk.annotations.create(id=task["id"], result=result, lead_time=2.0 + i, completed_by=user)
        annotation_of[pair_id] = created.id
        outcome = {"left": left, "right": OTHER[left], "tie": "tie", "both bad": "both_bad", None: OTHER[left]}[choice]
        email = "admin@example.com" if user == admin else "ann2@example.com"
        expected[pair_id] = (outcome, left, f"labelstudio:{email}", timedelta(seconds=2.0 + i), pair_id == pair_ids[0])

    first = pull(store, client, project="round trip")
    assert (first.new, first.updated, first.withdrawn, first.unchanged, first.unanswered) == (20, 0, 0, 0, 0)
    query = (
        "SELECT j.pair_id, j.outcome, j.left_image, a.name, j.answered_at - j.shown_at, j.is_gold, j.external_id, "
        "j.withdrawn FROM judgments j JOIN annotators a ON a.id = j.annotator_id WHERE j.source = 'labelstudio'"
    )
    with store.read() as con:
        rows = con.execute(query).fetchall()
    assert {r[0]: r[1:6] for r in rows} == expected
    assert {r[0]: int(r[6]) for r in rows} == annotation_of and not any(r[7] for r in rows)

    before = _state(store)
    again = pull(store, client, project="round trip")
    assert (again.new, again.updated, again.withdrawn, again.unchanged) == (0, 0, 0, 20)
    assert _state(store) == before

    edited_pair, deleted_pair = pair_ids[2], pair_ids[3]
    new_outcome = "both_bad" if expected[edited_pair][0] != "both_bad" else "tie"
    sdk.annotations.update(
        annotation_of[edited_pair], result=json.loads(CHOICE.format(new_outcome.replace("_", " ")))
    )
    sdk.annotations.delete(annotation_of[deleted_pair])
    third = pull(store, client, project="round trip")
    assert (third.new, third.updated, third.withdrawn, third.unchanged) == (0, 1, 1, 18)
    with store.read() as con:
        rows = {r[0]: r for r in con.execute(query).fetchall()}
    assert rows[edited_pair][1] == new_outcome and not rows[edited_pair][7]
    assert rows[deleted_pair][7] and rows[deleted_pair][1] == expected[deleted_pair][0]
    fourth = pull(store, client, project="round trip")
    assert (fourth.new, fourth.updated, fourth.withdrawn, fourth.unchanged) == (0, 0, 0, 19)


@pytest.mark.slow
def test_dead_server_bad_token_and_tampered_task_leave_the_store_unchanged(
    ls_server: LabelStudioServer, ls_store: tuple[Store, list[int]]
) -> None:
    store, pair_ids = ls_store
    client = LabelStudioClient(ls_server.url, ls_server.credentials.token)
    report = push(store, client, project="tampered", pair_ids=pair_ids[5:7], limit=1)
    assert (report.pushed, report.remaining) == (1, 1)
    project_id = client.find_project("tampered")
    (task,) = client.list_tasks(project_id)
    assert task["data"]["pair_id"] == pair_ids[5]
    sdk = _sdk(ls_server)
    sdk.annotations.create(id=task["id"], result=json.loads(CHOICE.format("left")), lead_time=1.0)
    sdk.tasks.update(str(task["id"]), data={**task["data"], "left_image": OTHER[task["data"]["left_image"]]})

    before = _state(store)
    with pytest.raises(LabelStudioError, match=f"task {task['id']} of project {project_id}: its data says pair"):
        pull(store, client, project="tampered")
    dead = LabelStudioClient(f"http://127.0.0.1:{_free_port()}", "some-token")
    bad = LabelStudioClient(ls_server.url, "not-the-token")
    for failing, message in ((dead, "cannot reach Label Studio at"), (bad, "refused the API token")):
        with pytest.raises(LabelStudioError, match=message):
            push(store, failing, project="errors")
        with pytest.raises(LabelStudioError, match=message):
            pull(store, failing, project="tampered")
    with pytest.raises(LabelStudioError, match="no project 'missing'"):
        pull(store, client, project="missing")
    assert _state(store) == before

    result = runner.invoke(app, [
        "--home", str(store.home), "labelstudio", "pull", "--url", dead.url, "--api-key", "x", "--project", "tampered"
    ])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: cannot reach Label Studio at") and result.output.count("\n") == 1


@pytest.mark.slow
def test_cli_push_with_suggestions_then_pull(
    ls_server: LabelStudioServer, ls_store: tuple[Store, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, pair_ids = ls_store
    with store.write() as con:
        agent = ensure_annotator(con, "test-scorer@1", kind="ai", model="test-scorer", version="1")
        insert_judgments(con, [
            NewJudgment(pair_id=p, annotator_id=agent, source="ai", outcome="a", score_a=2.0, score_b=0.5)
            for p in pair_ids[:3]
        ])
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.credentials.token)
    home = ["--home", str(store.home), "labelstudio"]

    result = runner.invoke(app, [*home, "push", "--scorer", "nobody@0", "--project", "cli"])
    assert result.exit_code == 1 and "no AI annotator 'nobody@0' (known: test-scorer@1)" in result.output
    result = runner.invoke(app, [*home, "push", "--limit", "5", "--scorer", "test-scorer@1", "--project", "cli"])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "pushed 5 pairs" in printed and "(3 with suggestions); 15 pairs not pushed yet" in printed

    project_id = LabelStudioClient(ls_server.url, ls_server.credentials.token).find_project("cli")
    tasks = list(_sdk(ls_server).tasks.list(project=project_id, fields="all"))
    suggested = {t.data["pair_id"]: t for t in tasks if t.predictions}
    assert sorted(suggested) == pair_ids[:3] and len(tasks) == 5
    for task in suggested.values():
        (prediction,) = task.predictions
        side = "left" if task.data["left_image"] == "a" else "right"
        assert prediction.model_version == "test-scorer@1"
        assert math.isclose(prediction.score, 1 / (1 + math.exp(-1.5)), rel_tol=1e-5)
        assert prediction.result == json.loads(CHOICE.format(side))

    result = runner.invoke(app, [*home, "pull", "--project", "cli"])
    assert result.exit_code == 0, result.output
    assert "judgments: 0 new, 0 updated, 0 withdrawn, 0 unchanged" in " ".join(result.output.split())
