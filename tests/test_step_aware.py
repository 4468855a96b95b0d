"""The step-aware preference model: identity at initialisation, learns t, saves and loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_clip import build_tiny_clip
from tiny_models import draw_shape

from reward_models.base import ScorerError
from reward_models.clip import ClipScorer, load_clip
from reward_models.step_aware import StepAwareCLIP, StepAwareScorer, timestep_embedding
from training.losses import pairwise_preference_loss

IMAGES = [draw_shape(c, s) for c, s in [("red", "circle"), ("blue", "square"), ("green", "circle")]]
PROMPTS = ["a red circle", "a blue square", "a red square"]


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def spm_path(clip_path, tmp_path_factory):
    clip, processor = load_clip(clip_path)
    return StepAwareCLIP.from_clip(clip).save_pretrained(tmp_path_factory.mktemp("spm"), processor)


def trained_spm(spm_path) -> StepAwareScorer:
    """One AdamW step of the pairwise loss at random timesteps, from the identity initialisation."""
    scorer = StepAwareScorer.from_pretrained(spm_path)
    model = scorer.model.train().requires_grad_(True)
    batch = scorer.inputs(IMAGES[:2], PROMPTS[:2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scores = model(**batch, timesteps=torch.tensor([100, 800]))
    loss, _ = pairwise_preference_loss(scores[:1], scores[1:], torch.tensor([1.0]))
    loss.mean().backward()
    optimizer.step()
    model.eval().requires_grad_(False)
    return scorer


def test_sinusoidal_embedding_by_hand():
    # dim 4: frequencies exp(-ln(10000) * [0, 1] / 2) = [1, 0.01]; t = 100 -> cos(100), cos(1), sin(100), sin(1).
    got = timestep_embedding(torch.tensor([0, 100]), 4)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [np.cos(100.0), np.cos(1.0), np.sin(100.0), np.sin(1.0)]])
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("t", [0, 1, 251, 501, 701, 951, 999])
def test_untrained_spm_is_the_clean_image_model_at_every_t(clip_path, spm_path, t):
    clean = ClipScorer.from_pretrained(clip_path).score(IMAGES, PROMPTS)
    spm = StepAwareScorer.from_pretrained(spm_path)
    assert spm.step_aware and spm.name == "spm"
    np.testing.assert_allclose(spm.score(IMAGES, PROMPTS, [t] * 3), clean, atol=1e-6, rtol=0)


def test_finished_images_are_scored_at_t0(spm_path):
    scorer = trained_spm(spm_path)
    np.testing.assert_array_equal(scorer.score(IMAGES, PROMPTS), scorer.score(IMAGES, PROMPTS, [0, 0, 0]))


def test_after_a_training_step_the_score_depends_on_t(spm_path):
    scorer = trained_spm(spm_path)
    early, late = scorer.score(IMAGES, PROMPTS, [0] * 3), scorer.score(IMAGES, PROMPTS, [900] * 3)
    assert np.abs(early - late).min() > 1e-4


def test_save_load_round_trip(spm_path, tmp_path):
    scorer = trained_spm(spm_path)
    scorer.model.save_pretrained(tmp_path / "saved", scorer.processor)
    loaded = StepAwareScorer.from_pretrained(tmp_path / "saved")
    timesteps = [0, 480, 990]
    np.testing.assert_allclose(loaded.score(IMAGES, PROMPTS, timesteps), scorer.score(IMAGES, PROMPTS, timesteps), atol=1e-6)
    # The folder stays a plain CLIP folder too: the clean-image tower loads on its own.
    assert ClipScorer.from_pretrained(tmp_path / "saved").score(IMAGES, PROMPTS).shape == (3,)


def test_plain_clip_folder_is_not_an_spm(clip_path):
    with pytest.raises(ScorerError, match="not a step-aware model folder"):
        StepAwareScorer.from_pretrained(clip_path)


def test_vision_layers_refuse_to_run_without_a_timestep(spm_path):
    scorer = StepAwareScorer.from_pretrained(spm_path)
    pixels = scorer.inputs(IMAGES, PROMPTS)["pixel_values"]
    with pytest.raises(RuntimeError, match="need a timestep"):
        scorer.model.clip.get_image_features(pixel_values=pixels)
