"""`workbench round ...` and `workbench demo`: closed preference rounds from the command line.

`round run`'s options are the fields of `workbench.rounds.config.RoundConfig` (`workbench.cli.options`)
and, under their flat names, those of its nested generation and curation configs, with their
defaults and help, so the dataclasses stay the one place where a round option is defined.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer

from training.errors import TrainingError
from workbench.cli.common import console, err_console, open_store, print_json, print_table, user_errors
from workbench.cli.options import Override, config_options
from workbench.generation_config import GenerationConfig
from workbench.rounds.config import (
    DEMO,
    DPO_DEFAULTS,
    FLAT_NAMES,
    RoundConfig,
    RoundCuration,
    demo_config,
    round_generation,
)
from workbench.rounds.driver import ensure_base_model, resume_round, run_auto, run_round
from workbench.rounds.errors import RoundError, RoundWaiting
from workbench.rounds.reading import RoundSummary, get_round, list_rounds, rounds_table

app = typer.Typer(no_args_is_help=True)


_THREADS = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's).")
def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


_JSON = typer.Option(False, "--json", help="Print JSON (one object) instead of the table.")


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def round_rows(summaries: list[RoundSummary]) -> list[dict]:
    """One JSON-ready record per round (the columns of `workbench.rounds.reading.rounds_table`)."""
    return rounds_table(summaries).to_dicts()


def print_rounds(summaries: list[RoundSummary]) -> None:
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
        except RoundWaiting as e:
            console.print(str(e), highlight=False, soft_wrap=True)
            raise typer.Exit(1) from e
        except TrainingError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from e
    if as_json:
        print_json({**(header or {}), "rounds": round_rows(done)})
    else:
        print_rounds(done)


GENERATION_OPTIONS = tuple(name for name, (group, _) in FLAT_NAMES.items() if group == "generation")
"""The `GenerationConfig` fields that `round run` has options for."""


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
    threads: int | None = _THREADS,
    as_json: bool = _JSON,
    **options: Any,
) -> None:
    """Run one round (or N with --auto): generate, judge, curate, train, evaluate, register."""
    _set_threads(threads)
    with user_errors():
        config = (
            RoundConfig.from_dict(json.loads(config_file.read_text()), str(config_file))
            if config_file
            else _config(options)
        )
        if n_rounds != 1 and not auto:
            raise RoundError("--rounds N needs --auto (N rounds without a person)")

    def work(store):
        if auto:
            on_round = None if as_json else lambda s: print_rounds([s])
            return run_auto(store, config, n_rounds, parent, on_round=on_round)
        return [run_round(store, config, parent, progress=True)]

    _run_and_report(ctx, work, as_json)


def _config(options: dict[str, Any]) -> RoundConfig:
    """The round config of `round run`'s options (keyed by field name, see `_options`)."""
    curation = {f.name: options.pop(f.name) for f in fields(RoundCuration)}
    generation = {name: options.pop(name) for name in GENERATION_OPTIONS}
    return RoundConfig.from_dict(
        {**options, "generation": {**round_generation().to_dict(), **generation}, "curation": curation}
    )


def _options() -> list:
    """`round run`'s config options: RoundConfig's own fields, then its generation and curation
    configs' under their flat names (`FLAT_NAMES`); ``--training`` items are KEY=VALUE."""
    as_items = {
        name: Override(
            default=[],
            annotation=list[str],
            help=f"{RoundConfig.__dataclass_fields__[name].metadata['help']} Repeatable: KEY=VALUE.",
        )
        for name in ("training", "spo_training")
    }
    defaults = round_generation()
    return [
        *config_options(RoundConfig, as_items, exclude=("generation", "curation")),
        *config_options(
            GenerationConfig,
            {name: Override(default=getattr(defaults, name)) for name in GENERATION_OPTIONS},
            exclude=tuple(f.name for f in fields(GenerationConfig) if f.name not in GENERATION_OPTIONS),
        ),
        *config_options(RoundCuration, {"method": Override(flag="consensus"), "saved": Override(flag="curation")}),
    ]


run.__signature__ = inspect.Signature([*list(inspect.signature(run).parameters.values())[:-1], *_options()])
app.command()(run)


@app.command()
def resume(
    ctx: typer.Context,
    round_id: int = typer.Argument(..., help="Round id."),
    threads: int | None = _THREADS,
    as_json: bool = _JSON,
) -> None:
    """Continue a waiting or failed round from its first unfinished stage, with its stored config."""
    _set_threads(threads)
    _run_and_report(ctx, lambda store: [resume_round(store, round_id, progress=True)], as_json)


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """Every round with its lineage, data and win rates."""
    with user_errors():
        summaries = list_rounds(open_store(ctx))
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
        summary = get_round(open_store(ctx), round_id)
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
    prompts: int = typer.Option(DEMO.num_prompts, "--prompts", help="Training captions per round."),
    train_steps: int = typer.Option(
        DPO_DEFAULTS["max_steps"], "--train-steps", help="DPO optimizer steps per round."
    ),
    eval_prompts: int = typer.Option(DEMO.eval_prompts, "--eval-prompts", help="Held-out captions."),
    eval_seeds: int = typer.Option(
        len(DEMO.eval_seeds), "--eval-seeds", help="Seeds per held-out caption."
    ),
    steps: int = typer.Option(
        DEMO.generation.num_inference_steps, "--steps", help="DDIM steps of generation and evaluation."
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
        config = demo_config(
            prompts=prompts,
            train_steps=train_steps,
            eval_prompts=eval_prompts,
            eval_seeds=eval_seeds,
            steps=steps,
            seed=len(list_rounds(store)) if seed is None else seed,
        )
        base = ensure_base_model(store)
        header.update(home=str(store.home), base_model=base, seed=config.seed)
        if not as_json:
            console.print(
                f"home: {store.home}; base model {base} (the shipped toy model); {n_rounds} rounds, seed {config.seed}",
                highlight=False,
                soft_wrap=True,
            )
        return run_auto(store, config, n_rounds, base)

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
