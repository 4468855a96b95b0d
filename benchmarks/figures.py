"""How every benchmark hands over its figures: printed, and written as a file when asked."""

from __future__ import annotations

import json
from pathlib import Path


def publish(figures: dict | str, out: Path | None) -> None:
    """Prints ``figures`` (a dict as indented JSON) and, when ``out`` is given, writes the same text
    there, making its folder."""
    text = figures if isinstance(figures, str) else json.dumps(figures, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text if text.endswith("\n") else text + "\n")
