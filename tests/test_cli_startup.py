"""The command line starts without torch, diffusers and transformers: real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKBENCH = Path(sys.executable).parent / "workbench"

# Runs CLI commands in one process, in order, then prints which heavy modules got imported.
_RUN_COMMANDS = """
import json, sys
from workbench.cli import app
codes = []
for args in json.loads(sys.argv[1]):
    try:
        codes.append(app(args, standalone_mode=False))
    except SystemExit as e:
        codes.append(e.code)
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=True
    )


def test_importing_the_cli_loads_no_model_library() -> None:
    code = (
        "import workbench.cli, sys; "
        "print(sorted(m for m in ('torch','diffusers','transformers') if m in sys.modules))"
    )
    assert _python(code).stdout.strip() == "[]"


def test_help_is_clean() -> None:
    result = subprocess.run([str(WORKBENCH), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torchvision" not in result.stdout + result.stderr
    for command in ("generate", "round", "train", "jobs", "user", "labelstudio"):
        assert f" {command} " in result.stdout


def test_light_commands_load_no_model_library(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    commands = [
        ["--home", home, "init"],
        ["--home", home, "stats", "--json"],
        ["--home", home, "jobs", "list"],
        ["--home", home, "user", "list"],
        ["--home", home, "round", "list"],
        ["round", "--help"],
        ["train", "dpo", "--help"],
        ["generate", "--help"],
    ]
    result = _python(_RUN_COMMANDS, json.dumps(commands))
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [None, None, None, None, None, 0, 0, 0], "heavy": []}, result.stdout
    assert "torchvision" not in result.stdout + result.stderr
    # The options still come from the config dataclasses.
    assert "--beta" in result.stdout and "--per-prompt" in result.stdout
