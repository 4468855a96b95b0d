"""The shapes world: a caption language, a procedural renderer and an oracle that reads images back.

Captions look like ``"a small red circle at the top left"``: an article, an optional size, a colour,
a shape and a position. The renderer draws one shape on a black square; the oracle reads colour,
shape, position and size back from pixels, so it can score any image (rendered or generated)
against any caption of the language. Pure code: numpy and Pillow only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from reward_models.base import Scorer

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 230, 40),
    "green": (40, 200, 60),
    "cyan": (40, 210, 230),
    "blue": (50, 90, 240),
    "purple": (160, 60, 230),
    "white": (235, 235, 235),
}
"""Colour words and the RGB the renderer paints them with."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
"""Shape words."""

# A 3 x 3 grid in reading order. The grid side is odd, so index parity is the grid's checkerboard
# colouring, which the held-out split below relies on to favour no side of the image.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.3, 0.3),
    "top": (0.5, 0.3),
    "top right": (0.7, 0.3),
    "left": (0.3, 0.5),
    "center": (0.5, 0.5),
    "right": (0.7, 0.5),
    "bottom left": (0.3, 0.7),
    "bottom": (0.5, 0.7),
    "bottom right": (0.7, 0.7),
}
"""Position names and the (x, y) anchor of the shape's centre, as fractions of the image side."""

SIZES: dict[str, float] = {"small": 0.14, "large": 0.23}
"""Size words and the shape's radius as a fraction of the image side."""

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "position", "size")
"""Attribute names, in the order the oracle reports them."""

_POSITION_PHRASES = {
    name: "in the center"
    if name == "center"
    else f"on the {name}"
    if name in ("left", "right")
    else f"at the {name}"
    for name in POSITIONS
}
_FOREGROUND_THRESHOLD = 90
_SIZE_THRESHOLD = (
    0.36  # bounding-box side / image side, between the largest small and the smallest large shape
)
_TEMPLATE_SIDE = 12
_SUPERSAMPLE = 4
_RADIUS_JITTER = 0.08
_POSITION_JITTER = 0.03
_COLOUR_JITTER = 12


@dataclass(frozen=True)
class Caption:
    """The attributes a caption asks for.

    Attributes:
        colour: a key of `COLOURS`.
        shape: one of `SHAPES`.
        position: a key of `POSITIONS`.
        size: a key of `SIZES`, or None when the caption leaves the size open.
    """

    colour: str
    shape: str
    position: str
    size: str | None = None

    def __post_init__(self) -> None:
        for attribute, allowed in (("colour", COLOURS), ("shape", SHAPES), ("position", POSITIONS)):
            if getattr(self, attribute) not in allowed:
                raise ValueError(
                    f"unknown {attribute} {getattr(self, attribute)!r}; expected one of {sorted(allowed)}"
                )
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {sorted(SIZES)} or None")

    @property
    def text(self) -> str:
        """The caption in the language, e.g. ``"a small red circle at the top left"``."""
        words = [w for w in (self.size, self.colour, self.shape) if w]
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words, _POSITION_PHRASES[self.position]])

    def attributes(self) -> dict[str, str]:
        """The attributes the caption specifies (size only when given)."""
        attrs = {"colour": self.colour, "shape": self.shape, "position": self.position}
        if self.size is not None:
            attrs["size"] = self.size
        return attrs


def parse_caption(text: str) -> Caption:
    """Parses a caption of the shapes language.

    Case, surrounding spaces, repeated spaces and a final full stop are ignored; "a" and "an"
    are both accepted.

    Args:
        text: e.g. ``"a small red circle at the top left"`` or ``"a blue square in the center"``.

    Returns:
        The caption's attributes.

    Raises:
        ValueError: the text is not a caption of the language; the message says what was expected.
    """
    words = text.strip().lower().rstrip(".").split()
    expected_form = (
        "'a [small|large] <colour> <shape> <position>', position as in 'at the top left', 'at the top', "
        "'on the left', 'in the center'"
    )
    if not words or words[0] not in ("a", "an"):
        raise ValueError(f"caption {text!r} must start with 'a' or 'an'; expected {expected_form}")
    rest = words[1:]
    size = rest.pop(0) if rest and rest[0] in SIZES else None
    if not rest or rest[0] not in COLOURS:
        got = rest[0] if rest else "nothing"
        raise ValueError(f"caption {text!r}: expected a colour ({', '.join(COLOURS)}), got {got!r}")
    colour = rest.pop(0)
    if not rest or rest[0] not in SHAPES:
        got = rest[0] if rest else "nothing"
        raise ValueError(f"caption {text!r}: expected a shape ({', '.join(SHAPES)}), got {got!r}")
    shape = rest.pop(0)
    phrase = " ".join(rest)
    for position, position_phrase in _POSITION_PHRASES.items():
        if phrase == position_phrase:
            return Caption(colour=colour, shape=shape, position=position, size=size)
    raise ValueError(
        f"caption {text!r}: expected a position ({', '.join(_POSITION_PHRASES.values())}), got {phrase or 'nothing'!r}"
    )


def _as_caption(caption: str | Caption) -> Caption:
    return caption if isinstance(caption, Caption) else parse_caption(caption)


@cache
def all_captions() -> tuple[str, ...]:
    """Every caption of the language (8 colours x 4 shapes x 9 positions x 3 size options = 864), in a fixed order."""
    return tuple(
        Caption(colour, shape, position, size).text
        for colour in COLOURS
        for shape in SHAPES
        for position in POSITIONS
        for size in (None, *SIZES)
    )


def is_held_out(caption: str | Caption) -> bool:
    """Whether a caption belongs to the held-out split.

    The split holds out whole (colour, shape, position) combinations, checkerboard-wise: those whose
    index sum is even. Every colour-shape, colour-position and shape-position pair still occurs in
    the training split, so held-out captions test composition of seen parts.
    """
    c = _as_caption(caption)
    index_sum = list(COLOURS).index(c.colour) + SHAPES.index(c.shape) + list(POSITIONS).index(c.position)
    return index_sum % 2 == 0


@cache
def train_captions() -> tuple[str, ...]:
    """The 432 captions a model may be trained on."""
    return tuple(c for c in all_captions() if not is_held_out(c))


@cache
def held_out_captions() -> tuple[str, ...]:
    """The 432 captions kept for evaluation, disjoint from `train_captions`."""
    return tuple(c for c in all_captions() if is_held_out(c))


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, ...]
) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        half = 0.9 * r
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif shape == "triangle":
        # Apex up, centroid at (cx, cy).
        draw.polygon([(cx, cy - 1.1 * r), (cx - r, cy + 0.55 * r), (cx + r, cy + 0.55 * r)], fill=fill)
    elif shape == "cross":
        arm = 0.36 * r
        draw.rectangle([cx - r, cy - arm, cx + r, cy + arm], fill=fill)
        draw.rectangle([cx - arm, cy - r, cx + arm, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(caption: str | Caption, size: int = 32, rng: np.random.Generator | None = None) -> Image.Image:
    """Draws the image a caption describes: one anti-aliased shape on black.

    Args:
        caption: caption text or parsed `Caption`.
        size: side of the square image in pixels.
        rng: source of small jitter in position, radius and colour, and of the size when the caption
            leaves it open. None draws the exact anchor, radius and colour (an open size is drawn large).

    Returns:
        An RGB image of ``size`` x ``size`` pixels.
    """
    c = _as_caption(caption)
    size_word = c.size or (str(rng.choice(list(SIZES))) if rng is not None else "large")
    ax, ay = POSITIONS[c.position]
    radius = SIZES[size_word]
    colour = np.array(COLOURS[c.colour], dtype=np.float64)
    if rng is not None:
        ax, ay = (
            ax + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER),
            ay + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER),
        )
        radius *= 1 + rng.uniform(-_RADIUS_JITTER, _RADIUS_JITTER)
        colour = colour + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, size=3)
    fill = tuple(int(v) for v in np.clip(colour, 0, 255).round())
    side = size * _SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    _draw_shape(ImageDraw.Draw(canvas), c.shape, ax * side, ay * side, radius * side, fill)
    return canvas.resize((size, size), Image.Resampling.BOX)


@dataclass(frozen=True)
class Reading:
    """What the oracle reads from an image.

    Attributes:
        colour, shape, position, size: the nearest value of each attribute, or None when the image
            has no foreground.
        foreground: fraction of pixels counted as foreground.
    """

    colour: str | None
    shape: str | None
    position: str | None
    size: str | None
    foreground: float


def _normalised(rgb: np.ndarray) -> np.ndarray:
    return rgb / max(float(rgb.max()), 1e-6)


_PALETTE = {name: _normalised(np.array(rgb, dtype=np.float64)) for name, rgb in COLOURS.items()}


def _crop_template(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    resized = Image.fromarray(crop, mode="F").resize(
        (_TEMPLATE_SIDE, _TEMPLATE_SIDE), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


@cache
def _shape_templates() -> dict[str, np.ndarray]:
    side = 96
    templates = {}
    for shape in SHAPES:
        canvas = Image.new("L", (side, side), 0)
        _draw_shape(ImageDraw.Draw(canvas), shape, side / 2, side / 2, side * 0.4, 255)
        templates[shape] = _crop_template(np.asarray(canvas) > 127)
    return templates


def read_image(image: Image.Image) -> Reading:
    """Reads colour, shape, position and size from an image.

    Foreground = pixels whose brightest channel exceeds 90. Colour = palette colour nearest to the
    brightness-normalised mean foreground colour; position = anchor nearest to the foreground
    centroid; size = bounding-box side against a threshold between the two sizes; shape = template
    closest to the cropped foreground mask.

    Args:
        image: any image; converted to RGB.

    Returns:
        The reading; all attributes are None when nothing is drawn.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    height, width = pixels.shape[:2]
    mask = pixels.max(axis=2) > _FOREGROUND_THRESHOLD
    count = int(mask.sum())
    if count == 0:
        return Reading(None, None, None, None, 0.0)
    mean = _normalised(pixels[mask].mean(axis=0))
    colour = min(_PALETTE, key=lambda name: float(np.sum((_PALETTE[name] - mean) ** 2)))
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height
    position = min(
        POSITIONS, key=lambda name: (POSITIONS[name][0] - cx) ** 2 + (POSITIONS[name][1] - cy) ** 2
    )
    extent = max((xs.max() - xs.min() + 1) / width, (ys.max() - ys.min() + 1) / height)
    size = "large" if extent > _SIZE_THRESHOLD else "small"
    crop = _crop_template(mask)
    shape = min(SHAPES, key=lambda name: float(np.abs(_shape_templates()[name] - crop).mean()))
    return Reading(colour, shape, position, size, count / mask.size)


def check(image: Image.Image, caption: str | Caption) -> dict[str, bool]:
    """Per-attribute correctness of an image for a caption.

    Args:
        image: the image to judge.
        caption: caption text or parsed `Caption`.

    Returns:
        For each attribute the caption specifies (colour, shape, position and, when given, size),
        whether the image shows it.
    """
    reading = read_image(image)
    return {
        name: getattr(reading, name) == wanted for name, wanted in _as_caption(caption).attributes().items()
    }


class ShapesOracle(Scorer):
    """Ground truth of the shapes world: the share of the caption's attributes an image satisfies.

    Not step-aware: timesteps are ignored.
    """

    name = "shapes-oracle"
    version = "1"
    step_aware = False

    def score(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        timesteps: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Scores images against shapes-language prompts.

        Args:
            images: N images.
            prompts: N captions of the language.
            timesteps: ignored.

        Returns:
            float64 array of shape (N,) with values in [0, 1].

        Raises:
            ScorerError: lengths differ.
            ValueError: a prompt is not a caption of the language.
        """
        self._check_lengths(images, prompts, timesteps)
        return np.array(
            [np.mean(list(check(im, p).values())) for im, p in zip(images, prompts, strict=True)],
            dtype=np.float64,
        )

    def check(self, image: Image.Image, caption: str | Caption) -> dict[str, bool]:
        """Per-attribute correctness; see the module function `check`."""
        return check(image, caption)


class SimulatedAnnotator:
    """A noisy stand-in for a person judging pairs, driven by the oracle.

    The preferred image is the one with the higher oracle score (equal scores give a tie); each
    decisive judgment is flipped with probability ``error_rate``. Ties are never flipped.

    Args:
        error_rate: probability in [0, 1] of preferring the worse image.
        seed: seeds the flips; the same seed and calls give the same judgments.
        oracle: the oracle to use; a new `ShapesOracle` by default.
    """

    def __init__(self, error_rate: float = 0.1, seed: int = 0, oracle: ShapesOracle | None = None) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.error_rate = error_rate
        self.seed = seed
        self.oracle = oracle or ShapesOracle()
        self._rng = np.random.default_rng(seed)

    @property
    def name(self) -> str:
        """Identifies the annotator, e.g. ``"simulated-e0.10-s0"``."""
        return f"simulated-e{self.error_rate:.2f}-s{self.seed}"

    def judge(self, image_a: Image.Image, image_b: Image.Image, caption: str) -> str:
        """Judges which of two images better matches a caption.

        Args:
            image_a: first image.
            image_b: second image.
            caption: caption of the shapes language.

        Returns:
            ``"a"``, ``"b"`` or ``"tie"``.
        """
        score_a, score_b = self.oracle.score([image_a, image_b], [caption, caption])
        if score_a == score_b:
            return "tie"
        better, worse = ("a", "b") if score_a > score_b else ("b", "a")
        return worse if self._rng.random() < self.error_rate else better
