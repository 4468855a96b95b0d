"""Oracle accuracy of a text-to-image pipeline on captions of the shapes world."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from diffusers import DiffusionPipeline
from PIL import Image

from reward_models.shapes import ATTRIBUTES, check
from workbench.evaluation import DEFAULT_GUIDANCE, DEFAULT_STEPS, sample_images


@dataclass
class EvalResult:
    """Oracle accuracy of generated images.

    Attributes:
        accuracy: per attribute, the share of images that show it, over the images whose caption
            specifies it (size is optional in captions).
        overall: share of images that show every attribute of their caption.
        mean_score: mean oracle score (share of the caption's attributes shown).
        records: one dict per image: caption, seed, score, all_correct and one bool per attribute.
        images: the images in record order when requested, else empty.
    """

    accuracy: dict[str, float]
    overall: float
    mean_score: float
    records: list[dict] = field(repr=False)
    images: list[Image.Image] = field(default_factory=list, repr=False)

    @property
    def n_images(self) -> int:
        """Number of images evaluated."""
        return len(self.records)

    def summary(self) -> dict[str, float]:
        """Flat dict: ``overall``, ``mean_score``, one entry per attribute and ``n_images``."""
        return {
            "overall": self.overall,
            "mean_score": self.mean_score,
            **self.accuracy,
            "n_images": self.n_images,
        }


def evaluate_pipeline(
    pipe: DiffusionPipeline,
    captions: Sequence[str],
    seeds: Sequence[int] = (0,),
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 64,
    return_images: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Generates one image per (caption, seed) and scores each with the shapes oracle.

    Each image gets its own generator seeded with its seed, so an image does not depend on the
    batch it was drawn in.

    Args:
        pipe: a text-to-image pipeline (the toy model or any model of the same family).
        captions: captions of the shapes language.
        seeds: seeds; every caption is drawn once per seed.
        num_inference_steps: sampler steps.
        guidance_scale: classifier-free guidance scale.
        batch_size: images per pipeline call.
        return_images: keep the images in the result.
        progress: show a progress bar over batches.

    Returns:
        Per-attribute and overall accuracy, with one record per image.

    Raises:
        ValueError: no captions or seeds, or a caption outside the language.
    """
    records: list[dict] = []
    images: list[Image.Image] = []
    drawn = sample_images(pipe, captions, seeds, num_inference_steps, guidance_scale, batch_size, progress)
    for caption, seed, image in drawn:
        correct = check(image, caption)
        records.append(
            {
                "caption": caption,
                "seed": seed,
                "score": float(np.mean(list(correct.values()))),
                "all_correct": all(correct.values()),
                **correct,
            }
        )
        if return_images:
            images.append(image)
    accuracy = {
        name: float(np.mean([r[name] for r in records if name in r]))
        for name in ATTRIBUTES
        if any(name in r for r in records)
    }
    return EvalResult(
        accuracy=accuracy,
        overall=float(np.mean([r["all_correct"] for r in records])),
        mean_score=float(np.mean([r["score"] for r in records])),
        records=records,
        images=images,
    )
