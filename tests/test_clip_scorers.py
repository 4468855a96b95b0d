"""CLIP score, PickScore and the aesthetic scorer on a tiny CLIP built in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_clip import build_tiny_clip, build_tiny_clip_model, build_tiny_clip_processor
from tiny_models import draw_shape
from transformers import CLIPModel

from reward_models.base import ScorerError
from reward_models.clip import AestheticHead, AestheticScorer, ClipScorer

CASES = [("red", "circle"), ("blue", "square"), ("green", "circle"), ("yellow", "square")]
IMAGES = [draw_shape(colour, shape, size=32) for colour, shape in CASES]
PROMPTS = [f"a {colour} {shape}" for colour, shape in CASES]


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def aligned_clip_path(tmp_path_factory):
    """A tiny CLIP trained contrastively on the four cases until each image matches its own prompt.

    Matched scores beat mismatched ones only for a model that learnt the pairing; a random
    model gives no such order, so the ranking test needs this one.
    """
    processor = build_tiny_clip_processor()
    model = build_tiny_clip_model(len(processor.tokenizer), seed=1).train()
    batch = processor(images=IMAGES, text=PROMPTS, return_tensors="pt", padding=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(20):
        loss = model(**batch, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    path = tmp_path_factory.mktemp("aligned")
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_clip_score_is_logit_scale_times_cosine(clip_path):
    scorer = ClipScorer.from_pretrained(clip_path)
    scores = scorer.score(IMAGES, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == np.float64

    model = CLIPModel.from_pretrained(clip_path).eval()
    batch = scorer.processor(images=IMAGES, text=PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits_per_image.diagonal()
    np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5)
    assert scorer.name == "clip" and scorer.version == str(clip_path) and not scorer.step_aware


def test_batches_do_not_change_scores(clip_path):
    full = ClipScorer.from_pretrained(clip_path).score(IMAGES, PROMPTS)
    one_by_one = ClipScorer.from_pretrained(clip_path, batch_size=1).score(IMAGES, PROMPTS)
    np.testing.assert_allclose(one_by_one, full, atol=1e-5)


def test_matching_prompt_scores_higher_than_mismatched(aligned_clip_path):
    scorer = ClipScorer.from_pretrained(aligned_clip_path, name="pickscore")
    assert scorer.name == "pickscore"
    for i, image in enumerate(IMAGES):
        scores = scorer.score([image] * len(PROMPTS), PROMPTS)
        assert scores.argmax() == i, (PROMPTS[i], scores)


def test_unknown_path_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ScorerError, match="no-such-model"):
        ClipScorer.from_pretrained(missing)


def test_length_mismatch_is_an_error(clip_path):
    with pytest.raises(ScorerError, match="2 images but 1 prompts"):
        ClipScorer.from_pretrained(clip_path).score(IMAGES[:2], PROMPTS[:1])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_aesthetic_head_on_normalised_image_embedding(clip_path, tmp_path, suffix):
    torch.manual_seed(0)
    head = AestheticHead(embed_dim=32).eval()
    head_path = tmp_path / f"head{suffix}"
    if suffix == ".safetensors":
        save_file(head.state_dict(), head_path)
    else:
        torch.save(head.state_dict(), head_path)

    scorer = AestheticScorer.from_pretrained(clip_path, head_path)
    scores = scorer.score(IMAGES, PROMPTS)
    assert scores.shape == (4,)
    assert scorer.name == "aesthetic" and head_path.name in scorer.version

    model = CLIPModel.from_pretrained(clip_path).eval()
    pixels = scorer.processor(images=IMAGES, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeds = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        expected = head(embeds)
    np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5)
    # Prompts are ignored: the aesthetic score belongs to the image alone.
    np.testing.assert_allclose(scorer.score(IMAGES, PROMPTS[::-1]), scores, atol=1e-6)


def test_aesthetic_head_of_wrong_size_is_an_error(clip_path, tmp_path):
    head_path = tmp_path / "head.safetensors"
    save_file(AestheticHead(embed_dim=768).state_dict(), head_path)
    with pytest.raises(ScorerError, match="head.safetensors"):
        AestheticScorer.from_pretrained(clip_path, head_path)
    with pytest.raises(ScorerError, match="missing.pth"):
        AestheticScorer.from_pretrained(clip_path, tmp_path / "missing.pth")
