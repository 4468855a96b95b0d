"""`workbench toy ...`: train and evaluate the shapes world's toy text-to-image model, and train its scorer."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from workbench.cli.common import user_errors
from workbench.cli.options import with_config_options
from workbench.toy import TOY_MODEL_DIR, TOY_SCORER_DIR
from workbench.toy.config import ToyScorerConfig, ToyTrainConfig

app = typer.Typer(no_args_is_help=True, help="The shapes world's toy text-to-image model.")


def train(
    out: Path = typer.Option(
        TOY_MODEL_DIR, "--out", help="Folder to write the pipeline to (default: the shipped model)."
    ),
    **options,
) -> None:
    """Train the toy model from scratch (autoencoder, then UNet + text encoder) and save the pipeline."""
    from workbench.toy.train import train_toy_model

    with user_errors():
        cfg = ToyTrainConfig(**options)
    result = train_toy_model(cfg, out)
    typer.echo(f"saved {result.out_dir} in {result.seconds['total']:.0f} s")
    if result.evals:
        typer.echo("held-out accuracy: " + json.dumps(result.evals[-1]))


app.command()(with_config_options(train, ToyTrainConfig))


def train_scorer(
    out: Path = typer.Option(
        TOY_SCORER_DIR,
        "--out",
        help="Folder to write the CLIP model and processor to (default: the shipped scorer).",
    ),
    **options,
) -> None:
    """Train the shapes world's PickScore (a small CLIP: contrastive, then oracle-judged pairs) and save it."""
    from workbench.toy.scorer import train_toy_scorer

    with user_errors():
        cfg = ToyScorerConfig(**options)
    result = train_toy_scorer(cfg, out)
    typer.echo(f"saved {result.out_dir}; process CPU seconds: " + json.dumps(result.cpu_seconds))
    if result.evaluation:
        typer.echo("held-out pairs: " + json.dumps(result.evaluation))


app.command("train-scorer")(with_config_options(train_scorer, ToyScorerConfig))


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
