"""What every stage of a round is given: `RoundContext`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datastore.store import Store
from workbench.rounds.config import RoundConfig


@dataclass
class RoundContext:
    """One round in progress, as each stage sees it.

    Attributes:
        store: the workbench store.
        round_id: the round's id.
        parent_model_id: the registered model the round starts from.
        config: the round's settings.
        results: the records of the stages done so far, by stage name (JSON-ready).
        progress: show progress bars.
    """

    store: Store
    round_id: int
    parent_model_id: int
    config: RoundConfig
    results: dict[str, Any]
    progress: bool = False
