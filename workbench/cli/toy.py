"""`workbench toy ...`: train and evaluate the shapes world's toy text-to-image model, and train its scorer."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import typer

from workbench.toy import TOY_MODEL_DIR, TOY_SCORER_DIR
from workbench.toy.config import ToyScorerConfig, ToyTrainConfig

app = typer.Typer(no_args_is_help=True, help="The shapes world's toy text-to-image model.")


def _with_config_options(command, config_class, out_default: Path, out_help: str):
    """Gives `command` one CLI option per field of `config_class`, with the field's default and help,
    so the dataclass stays the single place where settings are defined; plus ``--out``."""
    hints = get_type_hints(config_class)
    command.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                "out",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Path,
                default=typer.Option(out_default, "--out", help=out_help),
            ),
            *(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=hints[f.name],
                    default=typer.Option(f.default, "--" + f.name.replace("_", "-"), help=f.metadata["help"]),
                )
                for f in fields(config_class)
            ),
        ]
    )
    command.__annotations__ = {
        "out": Path,
        **{f.name: hints[f.name] for f in fields(config_class)},
        "return": None,
    }
    return command


def train(out: Path, **options) -> None:
    """Train the toy model from scratch (autoencoder, then UNet + text encoder) and save the pipeline."""
    from workbench.toy.train import train_toy_model

    try:
        cfg = ToyTrainConfig(**options)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    result = train_toy_model(cfg, out)
    typer.echo(f"saved {result.out_dir} in {result.seconds['total']:.0f} s")
    if result.evals:
        typer.echo("held-out accuracy: " + json.dumps(result.evals[-1]))


app.command()(
    _with_config_options(
        train, ToyTrainConfig, TOY_MODEL_DIR, "Folder to write the pipeline to (default: the shipped model)."
    )
)


def train_scorer(out: Path, **options) -> None:
    """Train the shapes world's PickScore (a small CLIP: contrastive, then oracle-judged pairs) and save it."""
    from workbench.toy.scorer import train_toy_scorer

    try:
        cfg = ToyScorerConfig(**options)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    result = train_toy_scorer(cfg, out)
    typer.echo(f"saved {result.out_dir}; process CPU seconds: " + json.dumps(result.cpu_seconds))
    if result.evaluation:
        typer.echo("held-out pairs: " + json.dumps(result.evaluation))


app.command("train-scorer")(
    _with_config_options(
        train_scorer,
        ToyScorerConfig,
        TOY_SCORER_DIR,
        "Folder to write the CLIP model and processor to (default: the shipped scorer).",
    )
)


@app.command()
def evaluate(
    model: Path = typer.Option(
        TOY_MODEL_DIR, "--model", help="Pipeline folder or hub id (default: the shipped model)."
    ),
    split: str = typer.Option("held-out", help="Captions to draw: held-out or train."),
    seeds: int = typer.Option(1, min=1, help="Seeds per caption (0, 1, ...)."),
    steps: int | None = typer.Option(None, help="Sampler steps (default: the evaluation default)."),
    guidance: float | None = typer.Option(None, help="Guidance scale (default: the evaluation default)."),
) -> None:
    """Draw every caption of a split and print the oracle's per-attribute and overall accuracy."""
    from diffusers import StableDiffusionPipeline

    from reward_models.shapes import held_out_captions, train_captions
    from workbench.toy.evaluate import DEFAULT_GUIDANCE, DEFAULT_STEPS, evaluate_pipeline

    captions = {"held-out": held_out_captions, "train": train_captions}.get(split)
    if captions is None:
        raise typer.BadParameter(f"split must be 'held-out' or 'train', got {split!r}")
    pipe = StableDiffusionPipeline.from_pretrained(str(model))
    result = evaluate_pipeline(
        pipe,
        captions(),
        seeds=range(seeds),
        num_inference_steps=steps or DEFAULT_STEPS,
        guidance_scale=DEFAULT_GUIDANCE if guidance is None else guidance,
        progress=True,
    )
    typer.echo(json.dumps({k: round(v, 4) for k, v in result.summary().items()}))
