"""Where the workbench keeps its data, and the options every command shares."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path.home() / ".workbench"
"""Home folder used when neither ``--home`` nor ``WORKBENCH_HOME`` is given."""


def resolve_home(home: Path | str | None = None) -> Path:
    """The workbench home: the explicit argument, else ``$WORKBENCH_HOME``, else ``~/.workbench``."""
    if home is not None:
        return Path(home).expanduser().resolve()
    env = os.environ.get("WORKBENCH_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_HOME


@dataclass(frozen=True)
class Settings:
    """Options shared by every command.

    Attributes:
        home: the workbench home folder (DuckDB file, media, datasets, runs, models).
    """

    home: Path

    @classmethod
    def from_home(cls, home: Path | str | None = None) -> Settings:
        return cls(home=resolve_home(home))
