"""Pairs of the shapes world for labeling tests, rendered in code and written to a store.

Each pair holds an image rendered from its prompt and one rendered from a caption that differs
in colour, shape and position, in a seeded random order, so which image is better is known.
Every ``same_every``-th pair instead holds two renders of the prompt (no image is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datastore.media import encode_png
from datastore.records import ImageRow, NewPair, insert_images, insert_pairs, insert_step_pool, upsert_prompts
from datastore.store import Store
from reward_models.shapes import COLOURS, POSITIONS, SHAPES, Caption, parse_caption, render, train_captions


@dataclass(frozen=True)
class MadePair:
    """A pair written by :func:`add_shapes_pairs`.

    Attributes:
        better: ``a`` or ``b``, the image rendered from the prompt; None when both are.
        gold: whether the pair was written as a gold pair (gold outcome = ``better``).
    """

    pair_id: int
    prompt: str
    better: str | None
    gold: bool


def _next(values: list[str], value: str) -> str:
    return values[(values.index(value) + 1) % len(values)]


def wrong_caption(caption: str) -> str:
    """A caption differing from ``caption`` in colour, shape and position."""
    c = parse_caption(caption)
    return Caption(_next(list(COLOURS), c.colour), _next(list(SHAPES), c.shape), _next(list(POSITIONS), c.position), c.size).text


def add_shapes_pairs(
    store: Store,
    n: int,
    *,
    kind: str = "final",
    gold_every: int = 0,
    same_every: int = 0,
    seed: int = 0,
    size: int = 32,
) -> list[MadePair]:
    """Write ``n`` pairs of rendered images; step pairs each get a pool of their two images.

    Args:
        kind: ``final`` or ``step``.
        gold_every: every k-th pair is gold (0: none).
        same_every: every k-th pair shows the prompt twice (0: none); never gold.
        seed: seeds the renders and the order inside each pair.
        size: image side in pixels.
    """
    rng = np.random.default_rng(seed)
    captions = train_captions()
    made = []
    with store.write() as con:
        for i in range(n):
            prompt = captions[(seed * 31 + i * 7) % len(captions)]
            prompt_id = upsert_prompts(con, [prompt])[prompt]
            same = bool(same_every) and i % same_every == same_every - 1
            good = render(prompt, size, rng)
            other = render(prompt if same else wrong_caption(prompt), size, rng)
            better_first = bool(rng.integers(2))
            first, second = (good, other) if better_first else (other, good)
            better = None if same else ("a" if better_first else "b")
            gold = bool(gold_every) and not same and i % gold_every == 0
            pool_id = timestep = step_index = None
            if kind == "step":
                step_index, timestep = 1 + i % 19, 950 - 50 * (i % 19)
                pool_id = insert_step_pool(
                    con, prompt_id=prompt_id, step_index=step_index, num_steps=20, timestep=timestep, k=2
                )
            # Test files need no fsync: nothing here has to survive a power cut.
            stored = [store.media.put_bytes(encode_png(im), sync=False) for im in (first, second)]
            insert_images(
                con, [ImageRow(s, pool_id=pool_id, step_index=step_index, timestep=timestep) for s in stored]
            )
            [pair_id] = insert_pairs(
                con,
                [
                    NewPair(
                        prompt_id=prompt_id,
                        image_a=stored[0].id,
                        image_b=stored[1].id,
                        kind=kind,
                        timestep=timestep,
                        pool_id=pool_id,
                        gold_outcome=better if gold else None,
                    )
                ],
            )
            made.append(MadePair(pair_id, prompt, better, gold))
    return made
