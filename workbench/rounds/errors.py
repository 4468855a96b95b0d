"""What a round raises: a round that cannot run, and a round that waits for people."""

from __future__ import annotations

from workbench.errors import WorkbenchError


class RoundError(WorkbenchError):
    """A round cannot run: a bad setting, a missing parent, or a round that does not exist."""


class RoundWaiting(WorkbenchError):
    """A round stopped to wait for human judgments; resume it once they are in.

    Attributes:
        round_id: the waiting round.
        missing: human judgments still needed.
        pairs: the round's pairs that still need one or more.
    """

    def __init__(self, round_id: int, missing: int, pairs: int):
        self.round_id, self.missing, self.pairs = round_id, missing, pairs
        super().__init__(
            f"round {round_id} waits for {missing} human judgments on {pairs} pairs: judge them on the "
            f"Annotate / Noisy steps pages or in Label Studio, then `workbench round resume {round_id}`"
        )
