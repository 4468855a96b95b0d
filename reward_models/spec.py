"""Scorers named by a short text spec, so a command line or a config file can choose one.

Specs:
    ``shapes-oracle``                      the shapes-world oracle
    ``clip:PATH_OR_HUB_ID``                CLIP score
    ``pickscore:PATH_OR_HUB_ID``           PickScore (same computation, PickScore weights)
    ``aesthetic:CLIP_PATH,HEAD_FILE``      LAION-style aesthetic head on a CLIP image embedding
    ``spm:PATH``                           a step-aware preference model folder
"""

from __future__ import annotations

import torch

from reward_models.base import Scorer, ScorerError
from reward_models.clip import AestheticScorer, ClipScorer
from reward_models.shapes import ShapesOracle
from reward_models.step_aware import StepAwareScorer

SPEC_HELP = "shapes-oracle, clip:PATH, pickscore:PATH, aesthetic:CLIP_PATH,HEAD_FILE or spm:PATH"


def scorer_from_spec(spec: str, device: str | torch.device = "cpu") -> Scorer:
    """Builds the scorer a spec names.

    Args:
        spec: See the module docstring.
        device: Where model-based scorers run.

    Returns:
        The scorer.

    Raises:
        ScorerError: The spec is malformed or its weights cannot be loaded.
    """
    kind, _, location = spec.partition(":")
    if kind == "shapes-oracle" and not location:
        return ShapesOracle()
    if not location:
        raise ScorerError(f"scorer spec {spec!r} is not one of: {SPEC_HELP}")
    if kind in ("clip", "pickscore"):
        return ClipScorer.from_pretrained(location, name=kind, device=device)
    if kind == "spm":
        return StepAwareScorer.from_pretrained(location, device=device)
    if kind == "aesthetic":
        clip_path, comma, head_path = location.partition(",")
        if not comma:
            raise ScorerError(f"scorer spec {spec!r}: expected aesthetic:CLIP_PATH,HEAD_FILE")
        return AestheticScorer.from_pretrained(clip_path, head_path, device=device)
    raise ScorerError(f"scorer spec {spec!r} is not one of: {SPEC_HELP}")
