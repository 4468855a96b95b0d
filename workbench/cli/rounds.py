"""`workbench round ...` and `workbench demo`: closed preference rounds from the command line.

`round run`'s options are the fields of `workbench.rounds.RoundConfig`, with their defaults and
help, so the dataclass stays the one place where a round option is defined.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import typer

from training.errors import TrainingError
from workbench import rounds
from workbench.cli.common import console, err_console, open_store, print_json, print_table, user_errors
from workbench.cli.train import config_options

app = typer.Typer(no_args_is_help=True)


_JSON = typer.Option(False, "--json", help="Print JSON (one object) instead of the table.")


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def round_rows(summaries: list[rounds.RoundSummary]) -> list[dict]:
    """One JSON-ready record per round (the columns of `workbench.rounds.rounds_table`)."""
    return rounds.rounds_table(summaries).to_dicts()


def print_rounds(summaries: list[rounds.RoundSummary]) -> None:
    """The per-round table: pairs, judgments, training time, win rates against parent and base."""
    print_table(
        [
            {
                "round": row["round"],
                "status": row["status"],
                "parent -> model": f"{row['parent']} -> {row['model'] if row['model'] is not None else '?'}",
                "pairs": row["pairs"],
                "judgments": row["judgments"],
                "trained on": row["dataset_pairs"],
                "train s": None if row["train_s"] is None else f"{row['train_s']:.1f}",
                "win vs parent": _rate(row["win_vs_parent"]),
                "win vs base": _rate(row["win_vs_base"]),
                "mean score": None if row["score"] is None else f"{row['score']:.3f}",
            }
            for row in round_rows(summaries)
        ],
        empty="no rounds yet",
    )


def _run_and_report(ctx: typer.Context, work: Any, as_json: bool = False, header: dict | None = None) -> None:
    """Runs rounds, printing each as it finishes; a waiting or failed round is one line and exit 1."""
    with user_errors():
        store = open_store(ctx)
        try:
            done = work(store)
        except rounds.RoundWaiting as e:
            console.print(str(e), highlight=False, soft_wrap=True)
            raise typer.Exit(1) from e
        except TrainingError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from e
    if as_json:
        print_json({**(header or {}), "rounds": round_rows(done)})
    else:
        print_rounds(done)


def run(
    ctx: typer.Context,
    parent: int | None = typer.Option(None, "--parent", help="Parent model id (default: the base model)."),
    auto: bool = typer.Option(
        False, "--auto", help="Run --rounds AI-feedback rounds, each from the last one's model."
    ),
    n_rounds: int = typer.Option(1, "--rounds", help="Rounds to run with --auto."),
    config_file: Path | None = typer.Option(
        None, "--config", help="JSON file with RoundConfig options, used instead of the options below."
    ),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's)."),
    as_json: bool = _JSON,
    **options: Any,
) -> None:
    """Run one round (or N with --auto): generate, judge, curate, train, evaluate, register."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    with user_errors():
        config = (
            rounds.RoundConfig.from_dict(json.loads(config_file.read_text()))
            if config_file
            else rounds.RoundConfig(**options)
        )
        if n_rounds != 1 and not auto:
            raise rounds.RoundError("--rounds N needs --auto (N rounds without a person)")

    def work(store):
        if auto:
            on_round = None if as_json else lambda s: print_rounds([s])
            return rounds.run_auto(store, config, n_rounds, parent, on_round=on_round)
        return [rounds.run_round(store, config, parent, progress=True)]

    _run_and_report(ctx, work, as_json)


run.__signature__ = inspect.Signature(
    [*list(inspect.signature(run).parameters.values())[:-1], *config_options(rounds.RoundConfig, {})]
)
app.command()(run)


@app.command()
def resume(
    ctx: typer.Context, round_id: int = typer.Argument(..., help="Round id."), as_json: bool = _JSON
) -> None:
    """Continue a waiting or failed round from its first unfinished stage, with its stored config."""
    _run_and_report(ctx, lambda store: [rounds.resume_round(store, round_id, progress=True)], as_json)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """Every round with its lineage, data and win rates."""
    with user_errors():
        summaries = rounds.list_rounds(open_store(ctx))
    if as_json:
        print_json(round_rows(summaries))
    else:
        print_rounds(summaries)


@app.command()
def show(
    ctx: typer.Context, round_id: int = typer.Argument(..., help="Round id."), as_json: bool = _JSON
) -> None:
    """A round's row and its config and results as JSON: everything needed to reproduce it."""
    with user_errors():
        summary = rounds.get_round(open_store(ctx), round_id)
    record = {
        "dataset_version": summary.dataset_version,
        "run_dir": summary.run_dir,
        "error": summary.error,
        "config": summary.config,
        "results": summary.results,
    }
    if as_json:
        print_json({**round_rows([summary])[0], **record})
        return
    print_rounds([summary])
    console.print_json(json.dumps(record, default=str))


def demo(
    ctx: typer.Context,
    n_rounds: int = typer.Option(2, "--rounds", help="Closed rounds to run."),
    prompts: int = typer.Option(rounds.DEMO.num_prompts, "--prompts", help="Training captions per round."),
    train_steps: int = typer.Option(
        int(rounds.DEMO_DPO["max_steps"]), "--train-steps", help="DPO optimizer steps per round."
    ),
    eval_prompts: int = typer.Option(rounds.DEMO.eval_prompts, "--eval-prompts", help="Held-out captions."),
    eval_seeds: int = typer.Option(
        len(rounds.DEMO.eval_seeds), "--eval-seeds", help="Seeds per held-out caption."
    ),
    steps: int = typer.Option(
        rounds.DEMO.num_inference_steps, "--steps", help="DDIM steps of generation and evaluation."
    ),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch."),
    seed: int | None = typer.Option(
        None,
        "--seed",
        help="Base seed (default: the number of rounds the home has, so a repeated demo draws new candidates).",
    ),
    as_json: bool = _JSON,
) -> None:
    """The closed loop on the shapes world, headless: toy model -> oracle feedback -> DPO -> evaluation, N times."""
    import torch

    torch.set_num_threads(threads)

    def work(store):
        config = rounds.demo_config(
            prompts=prompts,
            train_steps=train_steps,
            eval_prompts=eval_prompts,
            eval_seeds=eval_seeds,
            steps=steps,
            seed=len(rounds.list_rounds(store)) if seed is None else seed,
        )
        base = rounds.ensure_base_model(store)
        header.update(home=str(store.home), base_model=base, seed=config.seed)
        if not as_json:
            console.print(
                f"home: {store.home}; base model {base} (the shipped toy model); {n_rounds} rounds, seed {config.seed}",
                highlight=False,
                soft_wrap=True,
            )
        return rounds.run_auto(store, config, n_rounds, base)

    header: dict = {}
    _run_and_report(ctx, work, as_json, header)
    if not as_json:
        console.print(
            "pairs: final pairs the parent drew; judgments: oracle judgments of them; trained on: decided pairs "
            "in the round's dataset version; win vs parent / base: held-out captions x seeds where the new "
            "model's image scores higher with the oracle (ties count half).",
            highlight=False,
            soft_wrap=True,
        )
