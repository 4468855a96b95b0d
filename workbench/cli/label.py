"""`workbench label`: judgments from AI feedback; `workbench app`: the annotation app."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import typer

from labeling.ai_feedback import label_with_scorer
from labeling.queue import gold_accuracy
from reward_models.base import ScorerError
from workbench.access import AccessConfig, check_serving
from workbench.cli.common import console, err_console, open_store, user_errors

app = typer.Typer(no_args_is_help=True, help="Judge pairs with AI feedback; check annotators on gold pairs.")

ScorerName = Literal["shapes-oracle", "clip", "pickscore", "aesthetic", "spm"]
APP_FILE = Path(__file__).resolve().parents[2] / "app.py"


def scorer_spec(name: ScorerName, model: str | None, head: Path | None) -> str:
    """The reward_models spec of the scorer the options name (see reward_models.spec)."""
    if name == "shapes-oracle":
        if model is not None:
            raise ScorerError("the shapes oracle takes no --model")
        return name
    if model is None:
        raise ScorerError(f"scorer {name} needs --model: its weights folder (or hub id)")
    if name == "aesthetic":
        if head is None:
            raise ScorerError("scorer aesthetic needs --head: the aesthetic MLP weights file")
        return f"aesthetic:{model},{head}"
    return f"{name}:{model}"


@app.command("ai")
def ai(
    ctx: typer.Context,
    scorer: ScorerName = typer.Option(..., "--scorer", help="Which scorer judges the pairs."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="clip / pickscore / aesthetic: a CLIP folder or hub id; spm: a step-aware model folder.",
    ),
    head: Path | None = typer.Option(
        None, "--head", help="aesthetic: the MLP head weights (.safetensors or .pth)."
    ),
    kinds: list[str] = typer.Option(["final", "step"], "--kind", help="Pair kinds to judge."),
    limit: int | None = typer.Option(
        None, "--limit", min=0, help="Judge at most N pairs (default: every pending one)."
    ),
    tie_margin: float = typer.Option(
        0.0, "--tie-margin", min=0.0, help="A score difference up to this is a tie (in the scorer's units)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Pairs scored together."),
    device: str | None = typer.Option(
        None, "--device", help="Torch device (default: cuda when present, else cpu)."
    ),
) -> None:
    """Judge the pairs a scorer version has not judged yet (source 'ai'; the annotator is the scorer@version)."""
    import torch

    from reward_models.spec import scorer_from_spec

    with user_errors():
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        judge = scorer_from_spec(scorer_spec(scorer, model, head), device=device)
        report = label_with_scorer(
            open_store(ctx),
            judge,
            kinds=kinds,
            limit=limit,
            tie_margin=tie_margin,
            batch_size=batch_size,
            show_progress=True,
        )
    kinds_text = ", ".join(f"{n} {k}" for k, n in report.by_kind.items())
    console.print(
        f"{report.annotator}: {report.judged} judged ({kinds_text}), {report.ties} ties; "
        f"{report.already_judged} judged before"
    )


@app.command("gold")
def gold(ctx: typer.Context) -> None:
    """Accuracy of each annotator (people and AI) on gold pairs."""
    with user_errors():
        rows = gold_accuracy(open_store(ctx))
    if not rows:
        console.print("no judgments of gold pairs yet")
    for row in rows:
        console.print(
            f"{row.annotator} ({row.kind}): {row.correct}/{row.judged} = {row.accuracy:.1%}", highlight=False
        )


def serve(
    ctx: typer.Context,
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to serve on."),
    address: str = typer.Option(
        "127.0.0.1",
        "--address",
        help="Address to bind; anything but 127.0.0.1/::1/localhost (e.g. 0.0.0.0) opens the app to the network "
        "and makes everyone sign in (`workbench user add`).",
    ),
) -> None:
    """Start the Streamlit app (annotation, data, jobs) for this home on http://ADDRESS:PORT (127.0.0.1 by default)."""
    if not APP_FILE.is_file():
        err_console.print(
            f"[red]error:[/red] {APP_FILE} is missing: run the app from a source checkout (pip install -e .)"
        )
        raise typer.Exit(1)
    with user_errors():
        home = open_store(ctx).home
        check_serving(address, AccessConfig.from_env(home))
    err_console.print(f"serving {home} on http://{address}:{port}")
    # exec: the server gets this process's signals (Ctrl-C) and exit status directly.
    os.execve(sys.executable, streamlit_command(address, port), {**os.environ, "WORKBENCH_HOME": str(home)})


def streamlit_command(address: str, port: int) -> list[str]:
    """The command line that serves the app (`app.py`) on ``address:port``."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_FILE),
        "--server.address", address,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        # A served app is not edited while it runs; watching the checkout (and a .venv inside
        # it) for source changes cost the server half its CPU per judgment.
        "--server.fileWatcherType", "none",
    ]  # fmt: skip
