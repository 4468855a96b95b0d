"""Pure functions between store records and Label Studio JSON, and the project's labeling interface.

A pair goes out as a task: two images side by side, a Pairwise tag (click the better image) and
a Choices for left / right / tie / both bad (hotkeys 1-4), with the side shown left recorded in
the task data. A model's judgment can go with it as a prediction (a suggestion). Task data
names an image as ``/data/local-files/?d=media/<aa>/<sha>.<ext>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import quote

from datastore.records import Outcome
from labeling.answers import Side, outcome, side_of
from labeling.labelstudio.client import LabelStudioError
from labeling.labelstudio.server import MEDIA_LINK

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

SIDE_OF_CHOICE: dict[str, Side] = {"left": "left", "right": "right", "tie": "tie", "both bad": "both_bad"}
CHOICE_OF_SIDE: dict[Side, str] = {side: choice for choice, side in SIDE_OF_CHOICE.items()}


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
            outcome=outcome(side, left_image),
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
