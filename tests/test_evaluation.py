"""Head-to-head evaluation: win counting by hand and a real comparison on the shipped toy model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from diffusers import StableDiffusionPipeline

from reward_models.shapes import ShapesOracle, held_out_captions
from workbench.evaluation import compare_scores, sample_images, score_pipeline, win_rate
from workbench.threads import torch_threads
from workbench.toy import TOY_MODEL_DIR


def test_win_rate_counts_ties_as_half_and_decisive_rate_ignores_them():
    result = win_rate([1.0, 0.5, 0.75, 0.25, 1.0], [0.5, 0.5, 1.0, 0.25, 0.75])
    assert (result.wins, result.ties, result.losses) == (2, 2, 1)
    assert result.rate == pytest.approx((2 + 0.5 * 2) / 5)
    assert result.decisive_rate == pytest.approx(2 / 3)
    assert win_rate([0.5], [0.5]).decisive_rate == 0.5


def test_win_rate_refuses_unpaired_scores():
    with pytest.raises(ValueError, match="differ in length"):
        win_rate([1.0, 0.0], [1.0])


@pytest.fixture(scope="module")
def toy() -> Iterator[StableDiffusionPipeline]:
    with torch_threads(1):
        yield StableDiffusionPipeline.from_pretrained(TOY_MODEL_DIR, torch_dtype=torch.float32)


def test_images_do_not_depend_on_batching(toy):
    prompts = held_out_captions()[:3]
    one_batch = list(sample_images(toy, prompts, seeds=(0, 1), num_inference_steps=5, batch_size=6))
    small_batches = list(sample_images(toy, prompts, seeds=(0, 1), num_inference_steps=5, batch_size=4))
    assert [(p, s) for p, s, _ in one_batch] == [(p, s) for s in (0, 1) for p in prompts]
    for (_, _, a), (_, _, b) in zip(one_batch, small_batches, strict=True):
        assert a.tobytes() == b.tobytes()


def test_a_pipeline_against_itself_ties_everywhere_and_matches_the_oracle(toy):
    prompts = held_out_captions()[:4]
    scored = [
        score_pipeline(toy, ShapesOracle(), prompts, seeds=(0, 1), num_inference_steps=5, batch_size=3)
        for _ in range(2)
    ]
    comparison = compare_scores(*scored)
    assert comparison.win_rate.summary()["ties"] == 8 and comparison.win_rate.rate == 0.5
    images = [im for _, _, im in sample_images(toy, prompts, seeds=(0, 1), num_inference_steps=5)]
    expected = ShapesOracle().score(images, [p for _ in (0, 1) for p in prompts])
    assert [r["candidate_score"] for r in comparison.records] == list(expected)
    assert comparison.candidate_mean == pytest.approx(expected.mean())
