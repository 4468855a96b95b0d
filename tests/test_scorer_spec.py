"""Scorers built from text specs, as the command line and recipe configs name them."""

from __future__ import annotations

import pytest
from safetensors.torch import save_file
from tiny_clip import build_tiny_clip

from reward_models.base import ScorerError
from reward_models.clip import AestheticHead, AestheticScorer, ClipScorer, load_clip
from reward_models.shapes import ShapesOracle
from reward_models.spec import scorer_from_spec
from reward_models.step_aware import StepAwareCLIP, StepAwareScorer


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_each_kind(clip_path, tmp_path):
    assert isinstance(scorer_from_spec("shapes-oracle"), ShapesOracle)
    clip = scorer_from_spec(f"clip:{clip_path}")
    pickscore = scorer_from_spec(f"pickscore:{clip_path}")
    assert isinstance(clip, ClipScorer) and (clip.name, pickscore.name) == ("clip", "pickscore")

    model, processor = load_clip(clip_path)
    spm = StepAwareCLIP.from_clip(model).save_pretrained(tmp_path / "spm", processor)
    assert isinstance(scorer_from_spec(f"spm:{spm}"), StepAwareScorer)

    head = tmp_path / "head.safetensors"
    save_file(AestheticHead(embed_dim=32).state_dict(), head)
    assert isinstance(scorer_from_spec(f"aesthetic:{clip_path},{head}"), AestheticScorer)


@pytest.mark.parametrize("spec", ["clip", "clip:", "vit:/some/path", "aesthetic:/only/clip", "shapes-oracle:extra"])
def test_malformed_specs_are_named(spec):
    with pytest.raises(ScorerError, match="spec"):
        scorer_from_spec(spec)
