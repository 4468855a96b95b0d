"""Head-to-head evaluation of a checkpoint against another on fixed prompts and seeds.

Both pipelines draw one image per (prompt, seed) from the same initial noise, a scorer scores
every image, and the candidate wins a prompt-seed when its image scores higher. This is how a
round's checkpoint is compared with its parent and with the base model (`compare_scores`, so
that the candidate's images are drawn and scored once for both comparisons).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from statistics import fmean

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from reward_models.base import Scorer
from workbench.toy import DEFAULT_GUIDANCE, DEFAULT_STEPS


@torch.no_grad()
def sample_images(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 64,
    progress: bool = False,
    eta: float = 0.0,
) -> Iterator[tuple[str, int, Image.Image]]:
    """Yields ``(prompt, seed, image)`` for every seed and prompt, seed-major.

    ``eta`` is the DDIM noise of the pipeline's sampler: 0 (the pipeline's default) is
    deterministic given the initial noise; 1 is how SPO samples while training.

    Each image gets its own generator seeded with its seed, so an image depends only on the
    pipeline, its prompt and its seed, never on the batch it was drawn in.

    Raises:
        ValueError: no prompts or no seeds.
    """
    if not prompts or not seeds:
        raise ValueError("sampling needs at least one prompt and one seed")
    jobs = [(prompt, seed) for seed in seeds for prompt in prompts]
    pipe.set_progress_bar_config(disable=True)
    for start in tqdm(range(0, len(jobs), batch_size), desc="sample", unit="batch", disable=not progress):
        batch = jobs[start : start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(seed) for _, seed in batch]
        images = pipe(
            prompt=[prompt for prompt, _ in batch],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            eta=eta,
        ).images
        for (prompt, seed), image in zip(batch, images, strict=True):
            yield prompt, seed, image


@dataclass(frozen=True)
class WinRate:
    """Outcome counts of a candidate against a reference.

    Attributes:
        wins: prompt-seeds where the candidate's image scored higher.
        ties: equal scores.
        losses: the reference's image scored higher.
    """

    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        """Number of comparisons."""
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float:
        """Win rate with ties counted as half a win: 0.5 means no difference."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else 0.5

    @property
    def decisive_rate(self) -> float:
        """Share of wins among the comparisons that were not ties (0.5 when all tied)."""
        decided = self.wins + self.losses
        return self.wins / decided if decided else 0.5

    def summary(self) -> dict[str, float | int]:
        """Flat dict for tables and JSON: counts, ``win_rate`` and ``decisive_win_rate``."""
        return {
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "win_rate": self.rate,
            "decisive_win_rate": self.decisive_rate,
        }


def win_rate(candidate_scores: Sequence[float], reference_scores: Sequence[float]) -> WinRate:
    """Counts wins, ties and losses of paired scores.

    Raises:
        ValueError: the sequences differ in length.
    """
    candidate, reference = np.asarray(candidate_scores, float), np.asarray(reference_scores, float)
    if candidate.shape != reference.shape:
        raise ValueError(f"paired scores differ in length: {candidate.shape} vs {reference.shape}")
    return WinRate(
        wins=int((candidate > reference).sum()),
        ties=int((candidate == reference).sum()),
        losses=int((candidate < reference).sum()),
    )


@dataclass
class Comparison:
    """A candidate pipeline against a reference on the same prompts and seeds.

    Attributes:
        win_rate: the candidate's wins, ties and losses.
        candidate_mean: mean score of the candidate's images.
        reference_mean: mean score of the reference's images.
        records: one dict per prompt-seed: prompt, seed, candidate and reference score.
    """

    win_rate: WinRate
    candidate_mean: float
    reference_mean: float
    records: list[dict] = field(repr=False)

    def summary(self) -> dict[str, float | int]:
        """Flat dict: the win-rate summary plus both mean scores and ``n``."""
        return {
            **self.win_rate.summary(),
            "candidate_mean": self.candidate_mean,
            "reference_mean": self.reference_mean,
            "n": self.win_rate.n,
        }


def score_pipeline(
    pipe: DiffusionPipeline,
    scorer: Scorer,
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    batch_size: int = 64,
    progress: bool = False,
    **sampling,
) -> list[tuple[str, int, float]]:
    """``(prompt, seed, score)`` for each image the pipeline draws; ``sampling`` goes to `sample_images`."""
    scored = []
    batch: list[tuple[str, int, Image.Image]] = []
    drawn = sample_images(pipe, prompts, seeds, batch_size=batch_size, progress=progress, **sampling)
    for item in drawn:
        batch.append(item)
        if len(batch) == batch_size:
            scored += _score(scorer, batch)
            batch = []
    return scored + (_score(scorer, batch) if batch else [])


def _score(scorer: Scorer, batch: list[tuple[str, int, Image.Image]]) -> list[tuple[str, int, float]]:
    scores = scorer.score([image for _, _, image in batch], [prompt for prompt, _, _ in batch])
    return [(prompt, seed, float(s)) for (prompt, seed, _), s in zip(batch, scores, strict=True)]


def compare_scores(
    candidate: Sequence[tuple[str, int, float]], reference: Sequence[tuple[str, int, float]]
) -> Comparison:
    """Counts the candidate's wins over the reference on `score_pipeline` records of the same
    prompts and seeds.

    Raises:
        ValueError: the records are not of the same (prompt, seed)s in the same order.
    """
    if [(p, s) for p, s, _ in candidate] != [(p, s) for p, s, _ in reference]:
        raise ValueError("the candidate's and the reference's scores are not of the same prompts and seeds")
    records = [
        {"prompt": prompt, "seed": seed, "candidate_score": a, "reference_score": b}
        for (prompt, seed, a), (_, _, b) in zip(candidate, reference, strict=True)
    ]
    return Comparison(
        win_rate=win_rate([r["candidate_score"] for r in records], [r["reference_score"] for r in records]),
        candidate_mean=fmean(r["candidate_score"] for r in records),
        reference_mean=fmean(r["reference_score"] for r in records),
        records=records,
    )
