"""How benchmarks hand over figures: printed and written as a file, and from a configuration that
runs in a fresh process (so that its peak memory, compile cache and thread count are its own);
and how training steps are timed (`StepClock`)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


class FreshProcessError(RuntimeError):
    """A configuration run in a fresh process failed; the message ends with its stderr's tail."""


def publish(figures: dict | str, out: Path | None) -> None:
    """Prints ``figures`` (a dict as indented JSON) and, when ``out`` is given, writes the same text
    there, making its folder."""
    text = figures if isinstance(figures, str) else json.dumps(figures, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text if text.endswith("\n") else text + "\n")


def run_fresh(script: str, flag: str, spec: dict, what: str, **env: str) -> dict:
    """Runs ``python script flag JSON(spec)`` in a new process, with ``env`` added to the
    environment, and returns the JSON object its last line of output is.

    Raises:
        FreshProcessError: the process failed; the message names ``what`` and ends with the last
            4,000 characters of its stderr.
    """
    result = subprocess.run(
        [sys.executable, script, flag, json.dumps(spec)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise FreshProcessError(f"{what} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class StepClock:
    """Process CPU and wall time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ticks: list[tuple[float, float]] = []

    def tick(self, *_) -> None:
        self.ticks.append((time.process_time(), time.perf_counter()))

    @classmethod
    @contextlib.contextmanager
    def on_every_optimizer(cls):
        """A clock that ticks after every optimizer step taken in the block (a global torch hook)."""
        from torch.optim.optimizer import register_optimizer_step_post_hook

        clock = cls()
        handle = register_optimizer_step_post_hook(clock.tick)
        try:
            yield clock
        finally:
            handle.remove()

    def steady(self, steps: int, per_step: list[int] | None = None) -> tuple[float, float]:
        """CPU and wall seconds from the end of the first of ``steps`` recipe steps to the end of the last.

        ``per_step``: the optimizer steps each recipe step took, where they differ (an SPO round makes
        one per ``pairs_per_update`` kept pairs); by default every recipe step took the same number.
        """
        if per_step is None:
            if not self.ticks or len(self.ticks) % steps:
                raise RuntimeError(f"{len(self.ticks)} optimizer steps do not divide into {steps} recipe steps")
            per_step = [len(self.ticks) // steps] * steps
        if len(per_step) != steps or sum(per_step) != len(self.ticks) or per_step[0] < 1:
            raise RuntimeError(f"{len(self.ticks)} optimizer steps do not match {per_step} per recipe step")
        first, last = self.ticks[per_step[0] - 1], self.ticks[-1]
        return last[0] - first[0], last[1] - first[1]
