"""Schema migrations that add views: what the view holds, and a store opened before it gains it."""

from __future__ import annotations

from labeling_data import add_shapes_pairs

from datastore.store import Store

_JOINED = """
    SELECT p.id, p.prompt_id, pr.text, p.image_a, p.image_b, ia.path, ib.path, p.kind, p.timestep, p.pool_id,
           p.round_id, p.gold_outcome, p.source_ref, p.created_at, ia.generation_id, ib.generation_id,
           ia.source_model, ib.source_model
    FROM pairs p
    JOIN prompts pr ON pr.id = p.prompt_id
    JOIN images ia ON ia.id = p.image_a
    JOIN images ib ON ib.id = p.image_b
    ORDER BY p.id
"""


def test_pair_media_is_each_pair_with_its_prompt_and_image_files(store: Store) -> None:
    made = add_shapes_pairs(store, 4, gold_every=2) + add_shapes_pairs(store, 2, kind="step", seed=1)
    with store.read() as con:
        rows = con.execute("SELECT * FROM pair_media ORDER BY id").fetchall()
        names = [d[0] for d in con.execute("SELECT * FROM pair_media LIMIT 0").description]
        assert rows == con.execute(_JOINED).fetchall()
    assert names == [
        "id", "prompt_id", "prompt", "image_a", "image_b", "path_a", "path_b", "kind", "timestep", "pool_id",
        "round_id", "gold_outcome", "source_ref", "created_at", "generation_a", "generation_b",
        "source_model_a", "source_model_b",
    ]
    assert [r[2] for r in rows] == [m.prompt for m in made]
    assert all(store.media.resolve(r[5]).is_file() and store.media.resolve(r[6]).is_file() for r in rows)


def test_a_store_from_before_migration_11_gains_pair_media_on_open(store: Store) -> None:
    add_shapes_pairs(store, 3)
    with store.write() as con:
        con.execute("DROP VIEW pair_media")
        con.execute("DELETE FROM schema_migrations WHERE version = 11")
    assert store.schema_version() == 10
    reopened = Store.open(store.home)
    assert reopened.schema_version() == 11
    with reopened.read() as con:
        assert con.execute("SELECT count(*) FROM pair_media").fetchall() == [(3,)]


def test_pair_media_leaves_out_a_pair_whose_image_is_missing(store: Store) -> None:
    made = add_shapes_pairs(store, 3)
    with store.write() as con:
        con.execute("DELETE FROM images WHERE id = (SELECT image_b FROM pairs WHERE id = ?)", [made[0].pair_id])
        assert [r[0] for r in con.execute("SELECT id FROM pair_media ORDER BY id").fetchall()] == [
            m.pair_id for m in made[1:]
        ]
