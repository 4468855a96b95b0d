"""The shapes world: caption language, split, renderer, oracle and simulated annotator."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from reward_models.base import Scorer, ScorerError
from reward_models.shapes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Caption,
    ShapesOracle,
    SimulatedAnnotator,
    all_captions,
    check,
    held_out_captions,
    is_held_out,
    parse_caption,
    read_image,
    render,
    train_captions,
)


def _different(caption: Caption) -> Caption:
    """A caption that differs from ``caption`` in every attribute."""

    def next_of(values, value):
        values = list(values)
        return values[(values.index(value) + 1) % len(values)]

    size = next_of(SIZES, caption.size) if caption.size else None
    return Caption(
        next_of(COLOURS, caption.colour),
        next_of(SHAPES, caption.shape),
        next_of(POSITIONS, caption.position),
        size,
    )


def test_language_size_and_round_trip():
    captions = all_captions()
    assert len(captions) == len(set(captions)) == 864
    for text in captions:
        assert parse_caption(text).text == text
    assert parse_caption("  A Small RED circle at the top  left. ") == Caption(
        "red", "circle", "top left", "small"
    )
    assert parse_caption("a orange square in the center").text == "an orange square in the center"
    assert parse_caption("a white cross on the right") == Caption("white", "cross", "right")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must start with"),
        ("the red circle at the top left", "must start with"),
        ("a dog", "expected a colour"),
        ("a small pink circle at the top left", "expected a colour"),
        ("a red star at the top left", "expected a shape"),
        ("a red circle", "expected a position"),
        ("a red circle at the middle", "expected a position"),
        ("a red circle at the left", "expected a position"),
        ("a red circle at the top left please", "expected a position"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_split_is_disjoint_deterministic_and_covers_pairs():
    train, held = train_captions(), held_out_captions()
    assert len(train) == len(held) == 432
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(all_captions())
    assert held == tuple(c for c in all_captions() if is_held_out(c))
    assert "a red circle at the top left" in held and "a red circle at the top" in train
    # Held-out captions are whole unseen (colour, shape, position) combinations...
    parsed = [parse_caption(c) for c in train]
    held_triples = {(p.colour, p.shape, p.position) for p in map(parse_caption, held)}
    assert not {(p.colour, p.shape, p.position) for p in parsed} & held_triples
    # ...made of pairs that all occur in training.
    for a, b in itertools.combinations(("colour", "shape", "position"), 2):
        seen = {(getattr(p, a), getattr(p, b)) for p in parsed}
        wanted = {"colour": COLOURS, "shape": SHAPES, "position": POSITIONS}
        assert seen == set(itertools.product(wanted[a], wanted[b]))


def test_render_is_deterministic_given_rng():
    caption = "a small cyan triangle at the bottom right"
    assert render(caption).tobytes() == render(caption).tobytes()
    a = render(caption, rng=np.random.default_rng(3))
    b = render(caption, rng=np.random.default_rng(3))
    assert a.tobytes() == b.tobytes()
    assert a.size == (32, 32) and a.mode == "RGB"
    assert render(caption, size=64).size == (64, 64)


@pytest.mark.parametrize("size", [32, 64])
def test_oracle_reads_renders(size):
    rng = np.random.default_rng(size)
    captions = all_captions()
    picks = [captions[i] for i in rng.integers(len(captions), size=300)]
    images = [render(c, size, rng) for c in picks]
    oracle = ShapesOracle()
    assert isinstance(oracle, Scorer) and not oracle.step_aware
    scores = oracle.score(images, picks)
    assert scores.dtype == np.float64 and scores.shape == (300,)
    assert np.mean(scores == 1.0) >= 0.98
    wrong = oracle.score(images, [_different(parse_caption(c)).text for c in picks])
    assert np.mean(wrong) <= 0.05


def test_oracle_per_attribute_and_edge_cases():
    image = render("a large blue cross at the top right")
    assert check(image, "a large blue cross at the top right") == {
        "colour": True,
        "shape": True,
        "position": True,
        "size": True,
    }
    assert check(image, "a blue cross at the top right") == {"colour": True, "shape": True, "position": True}
    assert check(image, "a small blue square at the top right") == {
        "colour": True,
        "shape": False,
        "position": True,
        "size": False,
    }
    assert ShapesOracle().check(image, "a red cross at the top right")["colour"] is False

    blank = Image.new("RGB", (32, 32))
    assert read_image(blank).colour is None
    oracle = ShapesOracle()
    assert oracle.score([blank], ["a red circle in the center"]).tolist() == [0.0]
    # Not step-aware: timesteps change nothing.
    assert oracle.score([image], ["a blue cross at the top right"], timesteps=[500]).tolist() == [1.0]
    with pytest.raises(ScorerError):
        oracle.score([image, image], ["a blue cross at the top right"])
    with pytest.raises(ValueError, match="expected a shape"):
        oracle.score([image], ["a blue dog at the top right"])


def test_simulated_annotator_error_rate():
    rng = np.random.default_rng(0)
    captions = all_captions()
    pairs = []
    for i in rng.integers(len(captions), size=40):
        caption = parse_caption(captions[i])
        pairs.append((render(caption, rng=rng), render(_different(caption), rng=rng), caption.text))
    error_rate, n = 0.2, 1200
    annotator = SimulatedAnnotator(error_rate=error_rate, seed=7)
    judgments = []
    for k in range(n):
        good, bad, caption = pairs[k % len(pairs)]
        # Alternate sides so a side bias would show up as errors.
        judgments.append(
            annotator.judge(good, bad, caption) == "b"
            if k % 2
            else annotator.judge(bad, good, caption) == "a"
        )
    observed = float(np.mean(judgments))
    assert abs(observed - error_rate) <= 4 * np.sqrt(error_rate * (1 - error_rate) / n)

    runs = [
        [SimulatedAnnotator(0.3, seed=1).judge(good, bad, caption) for good, bad, caption in pairs]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    good, bad, caption = pairs[0]
    assert SimulatedAnnotator(error_rate=0.0).judge(good, good, caption) == "tie"
    assert SimulatedAnnotator(error_rate=0.0).judge(good, bad, caption) == "a"
    assert SimulatedAnnotator(error_rate=1.0).judge(good, bad, caption) == "b"
    with pytest.raises(ValueError, match="error_rate"):
        SimulatedAnnotator(error_rate=1.5)
