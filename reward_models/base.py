"""The one interface every scorer implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from PIL import Image


class ScorerError(Exception):
    """A scorer could not be built or could not score its input."""


class Scorer(ABC):
    """Scores how well each image matches its prompt; higher is better.

    Attributes:
        name: short identifier, e.g. ``"clip"`` or ``"shapes-oracle"``; recorded as the AI annotator's model.
        version: identifies the weights or rules, recorded with every AI judgment.
        step_aware: True when the score depends on ``timesteps`` (the image is a predicted x0 at step t).
    """

    name: str
    version: str
    step_aware: bool = False

    @abstractmethod
    def score(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        timesteps: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Score images against prompts.

        Args:
            images: N RGB images.
            prompts: N prompts, one per image.
            timesteps: N diffusion timesteps for noisy-step images, or None for finished images.
                Scorers that are not step-aware ignore it.

        Returns:
            float64 array of shape (N,).
        """

    def _check_lengths(self, images: Sequence, prompts: Sequence, timesteps: Sequence | None) -> None:
        if len(images) != len(prompts):
            raise ScorerError(f"{self.name}: got {len(images)} images but {len(prompts)} prompts")
        if timesteps is not None and len(timesteps) != len(images):
            raise ScorerError(f"{self.name}: got {len(images)} images but {len(timesteps)} timesteps")
