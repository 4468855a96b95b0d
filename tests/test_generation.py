"""Generation of final pairs and SPO step pools from tiny SD1.5 / SDXL pipelines built in the test."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image
from tiny_models import build_tiny_sd15, build_tiny_sdxl
from typer.testing import CliRunner

from datastore.store import Store
from training.parts import ModelLoadError
from training.sampling import predict_noise
from workbench.cli import app
from workbench.errors import GenerationError
from workbench.generation import (
    chain_seed,
    ddim_scheduler,
    generate_pairs,
    generate_step_pools,
    image_seed,
    pair_indices,
)
from workbench.generation_config import GenerationConfig, read_prompts
from workbench.pipelines import load_pipeline
from workbench.sampling import decode, denoise, encode_prompts
from workbench.toy import TOY_IMAGE_SIZE, train_captions

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd15(tmp_path_factory.mktemp("models") / "sd15")


@pytest.fixture(scope="module")
def sd15(sd15_dir: Path):
    return load_pipeline(sd15_dir)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory):
    return load_pipeline(build_tiny_sdxl(tmp_path_factory.mktemp("models") / "sdxl"))


def rows(store: Store, sql: str) -> list[tuple]:
    with store.read() as con:
        return con.execute(sql).fetchall()


def pixels(store: Store, path: str) -> np.ndarray:
    return np.asarray(store.media.open_image(path), dtype=np.int16)


def test_final_pairs_are_stored_with_their_seeds(store: Store, sd15) -> None:
    cfg = GenerationConfig(per_prompt=3, num_inference_steps=3, seed=7, batch_size=4)
    report = generate_pairs(store, sd15, "tiny-sd15", PROMPTS, cfg, progress=False)

    assert (report.prompts, report.images, report.pairs, report.seed) == (2, 6, 6, 7)
    generations = rows(
        store,
        "SELECT p.text, g.seed, g.sampler, g.steps, g.guidance, g.width, g.height, g.params, m.name "
        "FROM generations g JOIN prompts p ON p.id = g.prompt_id JOIN models m ON m.id = g.model_id ORDER BY g.id",
    )
    assert len(generations) == 6
    for text, seed, sampler, steps, guidance, width, height, params, model in generations:
        candidate = json.loads(params)["candidate"]
        assert seed == image_seed(7, text, candidate)
        assert (sampler, steps, guidance, width, height, model) == ("ddim", 3, 5.0, 16, 16, "tiny-sd15")
        assert json.loads(params)["eta"] == 1.0
    assert len({g[1] for g in generations}) == 6
    images = rows(store, "SELECT generation_id, pool_id, width FROM images")
    assert len(images) == 6 and all(g is not None and p is None and w == 16 for g, p, w in images)
    pairs = rows(store, "SELECT p.text, kind, timestep FROM pairs JOIN prompts p ON p.id = pairs.prompt_id")
    assert sorted(pairs) == sorted([(t, "final", None) for t in PROMPTS for _ in range(3)])


def test_same_seed_gives_the_same_bytes_and_each_image_regenerates_alone(tmp_path: Path, sd15) -> None:
    cfg = GenerationConfig(per_prompt=2, num_inference_steps=3, seed=11, batch_size=4)
    first, second = Store.open(tmp_path / "one"), Store.open(tmp_path / "two")
    generate_pairs(first, sd15, "m", PROMPTS, cfg, progress=False)
    generate_pairs(second, sd15, "m", PROMPTS, cfg, progress=False)
    sql = (
        "SELECT i.id, i.path, g.seed, p.text FROM images i JOIN generations g ON g.id = i.generation_id "
        "JOIN prompts p ON p.id = g.prompt_id ORDER BY g.id"
    )
    one, two = rows(first, sql), rows(second, sql)
    assert [r[0] for r in one] == [r[0] for r in two]
    assert first.media.read_bytes(one[0][1]) == second.media.read_bytes(two[0][1])

    third = Store.open(tmp_path / "three")
    generate_pairs(
        third,
        sd15,
        "m",
        PROMPTS[:1],
        GenerationConfig(per_prompt=2, num_inference_steps=3, seed=12),
        progress=False,
    )
    assert not {r[0] for r in one} & {r[0] for r in rows(third, sql)}

    # The last image of the batch, regenerated alone from its recorded seed.
    _, path, seed, prompt = one[-1]
    scheduler = ddim_scheduler(sd15, cfg)
    text = encode_prompts(sd15, [prompt], height=16, width=16)
    latents, _ = denoise(
        sd15,
        scheduler,
        text,
        [torch.Generator().manual_seed(seed)],
        height=16,
        width=16,
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
    )
    alone = np.asarray(decode(sd15, latents, 1)[0], dtype=np.int16)
    assert np.abs(alone - pixels(first, path)).max() <= 1


def test_pairing_schemes() -> None:
    assert pair_indices(4, "all", random.Random(0)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert pair_indices(4, "adjacent", random.Random(0)) == [(0, 1), (1, 2), (2, 3)]
    matching = pair_indices(5, "random", random.Random(0))
    used = [i for pair in matching for i in pair]
    assert len(matching) == 2 and len(set(used)) == 4


@pytest.mark.parametrize("which", ["sd15", "sdxl"])
def test_pool_candidates_share_their_parent_and_mean(which: str, request: pytest.FixtureRequest) -> None:
    """Each candidate is what DDIMScheduler.step gives from the same parent with the candidate's noise."""
    pipe = request.getfixturevalue(which)
    cfg = GenerationConfig(num_inference_steps=4, guidance_scale=3.0, eta=1.0)
    scheduler = ddim_scheduler(pipe, cfg)
    text = encode_prompts(pipe, PROMPTS, height=16, width=16)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    _, pools = denoise(
        pipe,
        scheduler,
        text,
        generators,
        height=16,
        width=16,
        guidance_scale=3.0,
        eta=1.0,
        pool_steps=(2, 3, 4),
        k=3,
    )

    assert [p.step for p in pools] == [2, 3, 4]
    timesteps = [int(t) for t in scheduler.timesteps]
    assert [p.timestep for p in pools] == [timesteps[2], timesteps[3], 0]
    assert [p.parent_timestep for p in pools] == timesteps[1:]
    for pool in pools:
        assert pool.candidates.shape == (2, 3, 4, 8, 8) and (pool.std > 0).all()
        torch.testing.assert_close(
            pool.candidates, pool.mean[:, None] + pool.std.view(2, 1, 1, 1, 1) * pool.noise
        )
        assert not torch.equal(pool.candidates[:, 0], pool.candidates[:, 1])
        t = timesteps[pool.step - 1]
        output = predict_noise(pipe.unet, scheduler, text, pool.parent, t, 3.0)
        for j in range(3):
            reference = DDIMScheduler.from_config(scheduler.config)
            reference.set_timesteps(4)
            expected = reference.step(
                output, t, pool.parent, eta=1.0, variance_noise=pool.noise[:, j]
            ).prev_sample
            torch.testing.assert_close(pool.candidates[:, j], expected, atol=1e-5, rtol=1e-4)
    for before, after in zip(pools, pools[1:], strict=False):
        continued = before.candidates[torch.arange(2), before.continued]
        assert torch.equal(after.parent, continued)
    torch.testing.assert_close(pools[-1].pred_x0, pools[-1].candidates)


def test_step_pools_are_stored_with_timesteps_and_continuation(store: Store, sd15) -> None:
    cfg = GenerationConfig(num_inference_steps=4, pool_k=3, pool_steps=(2, 4), seed=5, batch_size=6)
    report = generate_step_pools(store, sd15, "tiny-sd15", PROMPTS, cfg, progress=False)

    assert (report.pools, report.images, report.pairs) == (4, 12, 12)
    generations = rows(
        store, "SELECT g.seed, p.text, g.params FROM generations g JOIN prompts p ON p.id = g.prompt_id"
    )
    assert sorted(g[0] for g in generations) == sorted(chain_seed(5, t) for t in PROMPTS)
    assert json.loads(generations[0][2])["pool_steps"] == [2, 4]
    timesteps = [int(t) for t in ddim_scheduler(sd15, cfg).timesteps]
    pools = rows(
        store, "SELECT id, step_index, num_steps, timestep, k, continued_image, generation_id FROM step_pools"
    )
    assert sorted((p[1], p[3]) for p in pools) == [(2, timesteps[2]), (2, timesteps[2]), (4, 0), (4, 0)]
    for pool_id, step_index, num_steps, timestep, k, continued, generation_id in pools:
        assert (num_steps, k) == (4, 3)
        images = rows(
            store, f"SELECT id, step_index, timestep, generation_id FROM images WHERE pool_id = {pool_id}"
        )
        assert len(images) == 3
        assert all(i[1:] == (step_index, timestep, generation_id) for i in images)
        assert continued in {i[0] for i in images}
        pairs = rows(store, f"SELECT kind, timestep, image_a, image_b FROM pairs WHERE pool_id = {pool_id}")
        assert len(pairs) == 3 and all(p[:2] == ("step", timestep) for p in pairs)
        assert {p[2] for p in pairs} | {p[3] for p in pairs} == {i[0] for i in images}


def test_sdxl_pairs_and_pools(store: Store, sdxl) -> None:
    cfg = GenerationConfig(
        per_prompt=2, num_inference_steps=2, pool_k=2, pool_steps=(1, 2), seed=3, pairing="adjacent"
    )
    pairs = generate_pairs(store, sdxl, "tiny-sdxl", PROMPTS, cfg, progress=False)
    pools = generate_step_pools(store, sdxl, "tiny-sdxl", PROMPTS, cfg, progress=False)
    assert (pairs.images, pairs.pairs) == (4, 2)
    assert (pools.pools, pools.images, pools.pairs) == (4, 8, 4)
    assert rows(store, "SELECT kind, count(*) FROM pairs GROUP BY kind ORDER BY kind") == [
        ("final", 2),
        ("step", 4),
    ]
    assert rows(store, "SELECT DISTINCT width, height FROM images") == [(16, 16)]


def test_load_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_pipeline(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelLoadError, match="'nobody/none' is not a local folder.*must be in a local folder or reachable"
    ):
        load_pipeline("nobody/none")
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(
        ModelLoadError, match="is a DDPMPipeline; generation supports StableDiffusionPipeline"
    ):
        load_pipeline(tmp_path / "ddpm")


def test_generation_errors(store: Store, sd15) -> None:
    cfg = GenerationConfig(num_inference_steps=2, seed=0)
    with pytest.raises(GenerationError, match="prompt list is empty"):
        generate_pairs(store, sd15, "m", [], cfg, progress=False)
    with pytest.raises(GenerationError, match="prompt list is empty"):
        generate_step_pools(store, sd15, "m", [], cfg, progress=False)
    with pytest.raises(GenerationError, match="prompt 1 is empty"):
        generate_pairs(store, sd15, "m", ["a cat", "  "], cfg, progress=False)
    with pytest.raises(GenerationError, match="need eta > 0"):
        generate_step_pools(
            store, sd15, "m", PROMPTS, GenerationConfig(num_inference_steps=2, eta=0.0), progress=False
        )
    with pytest.raises(GenerationError, match="multiple of 2"):
        generate_pairs(store, sd15, "m", PROMPTS, GenerationConfig(height=17), progress=False)
    with pytest.raises(GenerationError, match="per_prompt must be 0 or >= 2"):
        GenerationConfig(per_prompt=1)
    with pytest.raises(GenerationError, match=r"pool_steps must lie in 1..4"):
        GenerationConfig(num_inference_steps=4, pool_steps=(0, 2))
    with pytest.raises(GenerationError, match="pairing must be one of"):
        GenerationConfig(pairing="best")  # type: ignore[arg-type]
    assert GenerationConfig().steps_with_pools() == (5, 10, 15, 20)
    assert rows(store, "SELECT count(*) FROM images") == [(0,)]


def test_read_prompts(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a red circle\n\n  a blue square  \n")
    assert read_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n\n{"prompt": "a dog", "id": 3}\n')
    assert read_prompts(tmp_path / "p.jsonl") == ["a cat", "a dog"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a cat"}\n{"text": "a dog"}\n')
    with pytest.raises(GenerationError, match="line 2"):
        read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(GenerationError, match="holds no prompt"):
        read_prompts(tmp_path / "blank.txt")


def test_cli_generate(tmp_path: Path, sd15_dir: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    home = tmp_path / "home"
    runner = CliRunner()

    def run(args: str):
        return runner.invoke(app, ["--home", str(home), "generate", *args.split()])

    result = run(
        f"--model {sd15_dir} --prompts {prompts} --per-prompt 2 --step-pools 2 --steps 1,2 "
        "--num-inference-steps 2 --seed 4"
    )
    assert result.exit_code == 0, result.output
    assert "final pairs: 4 images, 2 pairs" in result.output
    assert "step pools: 4 pools at steps [1, 2], 8 images, 4 step pairs" in result.output
    store = Store.open(home)
    kinds = rows(store, "SELECT kind, count(*) FROM pairs GROUP BY kind ORDER BY kind")
    assert kinds == [("final", 2), ("step", 4)]
    image = rows(store, "SELECT path FROM images LIMIT 1")[0][0]
    assert Image.open(io.BytesIO(store.media.read_bytes(image))).size == (16, 16)

    missing = run(f"--model {tmp_path / 'nope'} --prompts {prompts}")
    assert missing.exit_code == 1 and "does not exist" in missing.output and "Traceback" not in missing.output
    bad_steps = run(f"--model {sd15_dir} --prompts {prompts} --step-pools 2 --steps 4,x")
    assert bad_steps.exit_code == 1 and "--steps must be comma-separated" in bad_steps.output
    neither = run(f"--prompts {prompts}")
    assert neither.exit_code == 1 and "give either --model PATH_OR_ID or --toy" in neither.output


def test_cli_generate_from_the_shipped_toy_model(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = CliRunner().invoke(
        app,
        ["--home", str(home), "generate", "--toy", "--limit", "2", "--per-prompt", "2", "--step-pools", "2",
         "--steps", "10", "--num-inference-steps", "10", "--seed", "1"],
    )
    assert result.exit_code == 0, result.output
    store = Store.open(home)
    assert rows(store, "SELECT kind, count(*) FROM pairs GROUP BY kind ORDER BY kind") == [("final", 2), ("step", 2)]
    assert rows(store, "SELECT name FROM models") == [("toy",)]
    prompts = [p for (p,) in rows(store, "SELECT text FROM prompts ORDER BY id")]
    assert prompts == list(train_captions()[:2])
    image = rows(store, "SELECT path FROM images WHERE timestep IS NULL LIMIT 1")[0][0]
    assert Image.open(io.BytesIO(store.media.read_bytes(image))).size == (TOY_IMAGE_SIZE, TOY_IMAGE_SIZE)
