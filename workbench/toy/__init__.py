"""The shapes world's toy text-to-image model: a tiny Stable-Diffusion-format pipeline shipped with the package.

Load it like any SD1.5 checkpoint::

    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(TOY_MODEL_DIR)
"""

from __future__ import annotations

from pathlib import Path

from reward_models.shapes import (
    Caption,
    ShapesOracle,
    SimulatedAnnotator,
    all_captions,
    held_out_captions,
    parse_caption,
    render,
    train_captions,
)

TOY_MODEL_DIR = Path(__file__).parent / "model"
"""The shipped pipeline folder, made by ``workbench toy train`` with the default settings."""

TOY_SCORER_DIR = Path(__file__).parent / "scorer"
"""The shapes world's PickScore (a CLIPModel + CLIPProcessor folder), made by ``workbench toy train-scorer``.

Load it like PickScore: ``scorer_from_spec(f"pickscore:{TOY_SCORER_DIR}")``.
"""

TOY_IMAGE_SIZE = 32
"""Side in pixels of the images the shipped model draws."""

DEFAULT_STEPS = 20
"""DDIM steps used for evaluation images."""

DEFAULT_GUIDANCE = 3.0
"""Classifier-free guidance scale used for evaluation images."""

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "TOY_IMAGE_SIZE",
    "TOY_MODEL_DIR",
    "TOY_SCORER_DIR",
    "Caption",
    "ShapesOracle",
    "SimulatedAnnotator",
    "all_captions",
    "held_out_captions",
    "parse_caption",
    "render",
    "train_captions",
]
