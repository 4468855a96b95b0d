"""`workbench seed`: a fresh home gets pairs, step pools and oracle gold pairs, once."""

from __future__ import annotations

from pathlib import Path

from tiny_models import build_tiny_sd15

from datastore.records import ImageRow, NewPair, insert_images, insert_pairs, upsert_prompts
from datastore.store import Store
from labeling.queue import completion_previews
from reward_models.shapes import render
from workbench.seed import SeedConfig, mark_gold_pairs, seed_shapes_world


def test_seed_fills_an_empty_store_once(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    model = build_tiny_sd15(tmp_path / "sd15")
    cfg = SeedConfig(prompts=2, per_prompt=3, pool_prompts=1, pool_k=2)
    report = seed_shapes_world(store, cfg, model=model, progress=False)
    assert report is not None
    assert report.final_pairs == 6  # 2 captions x C(3, 2)
    assert report.step_pairs == 4  # one chain, a pool of 2 (one pair) at each of the 4 default pool steps
    with store.read() as con:
        kinds = dict(con.execute("SELECT kind, count(*) FROM pairs GROUP BY kind").fetchall())
        gold = con.execute("SELECT count(*) FROM pairs WHERE gold_outcome IS NOT NULL").fetchall()[0][0]
    assert kinds == {"final": 6, "step": 4}
    assert gold == report.gold_pairs
    assert seed_shapes_world(store, cfg, model=model, progress=False) is None


def test_seed_stores_a_completion_preview_for_every_step_pool_candidate(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    model = build_tiny_sd15(tmp_path / "sd15")
    seed_shapes_world(store, SeedConfig(prompts=1, per_prompt=2, pool_prompts=1, pool_k=2), model=model, progress=False)
    with store.read() as con:
        sizes = dict(
            con.execute(
                "SELECT i.id, [g.width, g.height] FROM images i JOIN generations g ON g.id = i.generation_id "
                "WHERE i.pool_id IS NOT NULL"
            ).fetchall()
        )
    assert len(sizes) == 8  # 4 pool steps x 2 candidates
    previews = completion_previews(store, list(sizes))
    assert previews.keys() == sizes.keys()
    for image, (_, path) in previews.items():
        assert list(store.media.open_image(path).size) == sizes[image]  # the model's size (16 x 16)


def test_gold_pairs_take_the_oracles_answer_above_the_margin(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    caption = "a large red circle at the top left"
    right = store.media.put_image(render(caption, 32))
    wrong_colour = store.media.put_image(render("a large blue circle at the top left", 32))
    all_wrong = store.media.put_image(render("a small green square at the bottom right", 32))
    with store.write() as con:
        insert_images(con, [ImageRow(right), ImageRow(wrong_colour), ImageRow(all_wrong)])
        prompt = upsert_prompts(con, [caption])[caption]
        close, clear_b, clear_a = insert_pairs(con, [
            NewPair(prompt, right.id, wrong_colour.id),   # oracle 1.0 vs 0.75: under the margin
            NewPair(prompt, all_wrong.id, right.id),      # 0.0 (or so) vs 1.0: image b clearly better
            NewPair(prompt, right.id, all_wrong.id),      # image a clearly better
        ])
    assert mark_gold_pairs(store, 0.5) == 2
    with store.read() as con:
        gold = dict(con.execute("SELECT id, gold_outcome FROM pairs").fetchall())
    assert gold == {close: None, clear_b: "b", clear_a: "a"}
