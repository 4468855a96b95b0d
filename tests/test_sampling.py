"""The one pooled sampler on the shapes that ship: VAEs that downsample by 2, 4 (the toy model) and 8 (SD).

Generation and SPO both sample through `training.sampling.denoise`; these tests pin that the
decoded side is the requested resolution in both, and that with one seed both draw the same pools.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from tiny_models import build_tiny_sd15

from datastore.store import Store
from reward_models.base import Scorer
from training.config import SPOConfig
from training.data import PreferencePair
from training.features import Features
from training.parts import load_parts
from training.sampling import complete, decode, denoise, latent_shape, predict_noise, vae_scale_factor
from training.spo import candidate_images, conditioning, judge_pools, main, pool_steps, sample_pools
from workbench import sampling as pipeline_sampling
from workbench.generation import ddim_scheduler, generate_pairs, generate_step_pools
from workbench.generation_config import GenerationConfig
from workbench.pipelines import load_pipeline
from workbench.toy import TOY_IMAGE_SIZE, TOY_MODEL_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["a red circle at the top left", "a blue square in the center"]


class SizeScorer(Scorer):
    """Scores by brightness and records the size of every image it was shown."""

    name = "size"
    version = "1"
    step_aware = True

    def __init__(self) -> None:
        self.sizes: set[tuple[int, int]] = set()

    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[str], timesteps: Sequence[int] | None = None
    ) -> np.ndarray:
        self._check_lengths(images, prompts, timesteps)
        self.sizes.update(image.size for image in images)
        return np.array([np.asarray(image, dtype=np.float64).mean() for image in images])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[int, Path]:
    """Tiny SD1.5 pipelines by VAE factor (2, 4, 8), and the shipped toy model (factor 4)."""
    root = tmp_path_factory.mktemp("factors")
    built = {
        2 ** (blocks - 1): build_tiny_sd15(root / f"vae{blocks}", vae_blocks=blocks) for blocks in (2, 3, 4)
    }
    return {**built, 0: TOY_MODEL_DIR}


def resolution_of(path: Path) -> int:
    """The native side of a pipeline: UNet sample size x VAE factor."""
    unet = json.loads((path / "unet" / "config.json").read_text())
    vae = json.loads((path / "vae" / "config.json").read_text())
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


@pytest.mark.parametrize("factor", [2, 4, 8, 0], ids=["vae2", "vae4", "vae8", "toy"])
def test_generation_and_spo_decode_at_the_requested_resolution(models, factor, tmp_path) -> None:
    path = models[factor]
    side = resolution_of(path)
    pipe = load_pipeline(path)
    assert vae_scale_factor(pipe.vae) == pipe.vae_scale_factor
    if factor:
        assert pipe.vae_scale_factor == factor
    else:
        assert (side, pipe.vae_scale_factor) == (TOY_IMAGE_SIZE, 4)

    # Generation: final pairs and step pools.
    store = Store.open(tmp_path / "home")
    cfg = GenerationConfig(
        per_prompt=2, num_inference_steps=3, pool_k=2, pool_steps=(2, 3), seed=1, batch_size=4
    )
    generate_pairs(store, pipe, "m", PROMPTS, cfg, progress=False)
    generate_step_pools(store, pipe, "m", PROMPTS, cfg, progress=False)
    with store.read() as con:
        sizes = con.execute("SELECT width, height, count(*) FROM images GROUP BY ALL").fetchall()
    assert sizes == [(side, side, 2 * 2 + 2 * 2 * 2)]

    # SPO: every candidate the scorer judges has the same side, at another resolution too.
    for resolution in (side, 2 * side):
        scorer = SizeScorer()
        spo = SPOConfig(
            pretrained_model=str(path),
            output_dir=tmp_path / f"spo{resolution}",
            prompts=tuple(PROMPTS),
            resolution=resolution,
            num_inference_steps=4,
            warmup_steps=1,
            max_timestep=999,
            threshold=0.0,
            max_steps=1,
        )
        parts = load_parts(str(path))
        scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)
        scheduler.set_timesteps(spo.num_inference_steps)
        text = conditioning(Features(parts, resolution, torch.device("cpu")), PROMPTS, False, resolution)
        generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
        pools = sample_pools(parts.unet, parts, scheduler, text, generators, spo)
        assert [p.step for p in pools] == [2, 3, 4] == list(pool_steps(scheduler, spo))
        latent_side = resolution // pipe.vae_scale_factor
        assert pools[0].candidates.shape == (2, 4, 4, latent_side, latent_side)
        images, timesteps = candidate_images(pools, parts.unet, parts, scheduler, text, spo)
        assert timesteps == [p.timestep for p in pools for _ in range(8)]
        pairs, _ = judge_pools(pools, images, timesteps, PROMPTS, scorer, spo)
        assert scorer.sizes == {(resolution, resolution)}
        assert len(pairs) > 0 and pairs.winner.shape[-1] == latent_side


def test_generation_and_spo_draw_the_same_pools_from_one_seed(models) -> None:
    """The pools of `workbench generate --step-pools` and of SPO's sampler are the same tensors."""
    path = TOY_MODEL_DIR
    pipe = load_pipeline(path)
    gen = GenerationConfig(num_inference_steps=5, guidance_scale=5.0, eta=1.0, pool_k=3, pool_steps=(3, 4, 5))
    scheduler = ddim_scheduler(pipe, gen)
    text = pipeline_sampling.encode_prompts(pipe, PROMPTS, height=TOY_IMAGE_SIZE, width=TOY_IMAGE_SIZE)
    _, generated = pipeline_sampling.denoise(
        pipe,
        scheduler,
        text,
        [torch.Generator().manual_seed(s) for s in (7, 8)],
        height=TOY_IMAGE_SIZE,
        width=TOY_IMAGE_SIZE,
        guidance_scale=5.0,
        eta=1.0,
        pool_steps=gen.steps_with_pools(),
        k=3,
    )

    spo = SPOConfig(
        pretrained_model=str(path),
        output_dir=Path("unused"),
        prompts=tuple(PROMPTS),
        resolution=TOY_IMAGE_SIZE,
        num_inference_steps=5,
        num_candidates=3,
        warmup_steps=2,
        max_timestep=999,
        guidance_scale=5.0,
    )
    parts = load_parts(str(path))
    spo_text = conditioning(
        Features(parts, TOY_IMAGE_SIZE, torch.device("cpu")), PROMPTS, False, TOY_IMAGE_SIZE
    )
    torch.testing.assert_close(spo_text.hidden, text.hidden)
    trained = sample_pools(
        parts.unet, parts, scheduler, spo_text, [torch.Generator().manual_seed(s) for s in (7, 8)], spo
    )

    assert [p.step for p in trained] == [p.step for p in generated] == [3, 4, 5]
    for a, b in zip(generated, trained, strict=True):
        assert a.candidates.shape == (2, 3, 4, 8, 8)
        for name in ("parent", "mean", "noise", "candidates", "pred_x0", "continued"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-5)


def four_step_chains(path: Path):
    """A model's parts, a 4-step DDIM scheduler, its native side and the conditioning of PROMPTS."""
    parts = load_parts(str(path))
    scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)
    scheduler.set_timesteps(4)
    side = resolution_of(path)
    return parts, scheduler, side, conditioning(Features(parts, side, torch.device("cpu")), PROMPTS, False, side)


def test_completion_of_a_candidate_is_its_deterministic_chain(models) -> None:
    """Completing a pool's candidates with eta 0 equals running the rest of the chain with eta 0 by hand."""
    parts, scheduler, side, text = four_step_chains(models[4])
    shape = latent_shape(parts.unet, parts.vae, side, side)
    _, (pool,) = denoise(
        parts.unet,
        scheduler,
        text,
        [torch.Generator().manual_seed(s) for s in (1, 2)],
        shape=shape,
        guidance_scale=3.0,
        eta=1.0,
        pool_steps=(2,),
        k=2,
    )
    flat = pool.candidates.flatten(0, 1)
    flat_text = text.select(torch.arange(2).repeat_interleave(2))
    finished = complete(parts.unet, scheduler, flat_text, flat, from_step=2, guidance_scale=3.0)

    reference = DDIMScheduler.from_config(scheduler.config)
    reference.set_timesteps(4)
    latents = flat.clone()
    for t in reference.timesteps[2:].tolist():
        output = predict_noise(parts.unet, reference, flat_text, latents, t, 3.0)
        latents = reference.step(output, t, latents, eta=0.0).prev_sample
    torch.testing.assert_close(finished, latents, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(finished[0], finished[1])
    assert {image.size for image in decode(parts.vae, finished)} == {(side, side)}


def test_judged_x0_guidance_changes_only_what_is_judged(models) -> None:
    """``x0_guidance_scale`` gives each candidate's x0 at that scale, from the same UNet call; the chain is untouched."""
    parts, scheduler, side, text = four_step_chains(models[4])

    def sample(x0_guidance_scale):
        return denoise(
            parts.unet,
            scheduler,
            text,
            [torch.Generator().manual_seed(s) for s in (1, 2)],
            shape=latent_shape(parts.unet, parts.vae, side, side),
            guidance_scale=3.0,
            eta=1.0,
            pool_steps=(2,),
            k=2,
            x0_guidance_scale=x0_guidance_scale,
        )

    final, (pool,) = sample(None)
    final_1, (pool_1,) = sample(1.0)
    torch.testing.assert_close(final_1, final, rtol=0, atol=0)
    torch.testing.assert_close(pool_1.candidates, pool.candidates, rtol=0, atol=0)
    flat = pool.candidates.flatten(0, 1)
    flat_text = text.select(torch.arange(2).repeat_interleave(2))
    t = pool.timestep
    for scale, judged in ((3.0, pool.pred_x0), (1.0, pool_1.pred_x0)):
        output = predict_noise(parts.unet, scheduler, flat_text, flat, t, scale)
        alpha = scheduler.alphas_cumprod[t]
        x0 = (flat - (1 - alpha).sqrt() * output) / alpha.sqrt()  # epsilon prediction, by hand
        torch.testing.assert_close(judged.flatten(0, 1), x0, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(pool_1.pred_x0, pool.pred_x0)


def test_spo_on_the_toy_model_judges_32_px_images(tmp_path) -> None:
    scorer = SizeScorer()
    cfg = SPOConfig(
        pretrained_model=str(TOY_MODEL_DIR),
        output_dir=tmp_path / "run",
        prompts=tuple(PROMPTS),
        resolution=TOY_IMAGE_SIZE,
        num_inference_steps=6,
        warmup_steps=2,
        threshold=0.0,
        prompts_per_step=2,
        max_steps=2,
    )
    main(cfg, scorer)
    assert scorer.sizes == {(32, 32)} and TOY_IMAGE_SIZE == 32
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["pairs"] > 0 for r in records)


def test_completion_previews_are_stored_for_every_candidate(models, tmp_path) -> None:
    """`--previews completion`: each pool candidate links to the finished image of its eta-0 completion."""
    path = models[4]
    pipe = load_pipeline(path)
    side = resolution_of(path)
    store = Store.open(tmp_path / "home")
    cfg = GenerationConfig(
        num_inference_steps=4, pool_k=2, pool_steps=(2, 4), seed=9, batch_size=4, previews="completion"
    )
    report = generate_step_pools(store, pipe, "m", PROMPTS, cfg, progress=False)
    with store.read() as con:
        links = con.execute(
            "SELECT c.id, c.step_index, c.generation_id, p.id, p.generation_id, p.pool_id, p.width, g.seed, pr.text "
            "FROM image_previews v JOIN images c ON c.id = v.image_id JOIN images p ON p.id = v.preview_id "
            "JOIN generations g ON g.id = c.generation_id JOIN prompts pr ON pr.id = g.prompt_id "
            "WHERE v.kind = 'completion' ORDER BY c.step_index, pr.text"
        ).fetchall()
        candidates = con.execute("SELECT count(*) FROM images WHERE pool_id IS NOT NULL").fetchone()[0]
    assert len(links) == candidates == 2 * 2 * 2
    assert report.images == candidates + len({row[3] for row in links})
    for _, step_index, generation, _, preview_generation, preview_pool, width, _, _ in links:
        assert (preview_generation, width) == (generation, side)
        # A completion is a finished image of the chain, not a pool member, except at the last
        # step, where the candidates are finished and each is its own completion.
        assert preview_pool is None if step_index < 4 else preview_pool is not None
    assert all(row[0] == row[3] for row in links if row[1] == 4)

    # A step-2 completion is the chain redrawn to step 2 with its seed, then finished with eta 0.
    candidate_id, _, _, preview_id, _, _, _, seed, prompt = links[0]
    text = pipeline_sampling.encode_prompts(pipe, [prompt], height=side, width=side)
    scheduler = ddim_scheduler(pipe, cfg)
    _, pools = pipeline_sampling.denoise(
        pipe,
        scheduler,
        text,
        [torch.Generator().manual_seed(seed)],
        height=side,
        width=side,
        guidance_scale=cfg.guidance_scale,
        eta=cfg.eta,
        pool_steps=(2, 4),
        k=2,
    )
    with store.read() as con:
        pool_images = [
            r[0]
            for r in con.execute(
                "SELECT i.id FROM images i JOIN step_pools s ON s.id = i.pool_id WHERE i.step_index = 2 "
                "AND s.generation_id = (SELECT generation_id FROM images WHERE id = ?) ORDER BY i.rowid",
                [candidate_id],
            ).fetchall()
        ]
    index = pool_images.index(candidate_id)
    finished = complete(
        pipe.unet,
        scheduler,
        text,
        pools[0].candidates[:, index],
        from_step=2,
        guidance_scale=cfg.guidance_scale,
    )
    expected = np.asarray(decode(pipe.vae, finished)[0], dtype=np.int16)
    with store.read() as con:
        preview_path = con.execute("SELECT path FROM images WHERE id = ?", [preview_id]).fetchone()[0]
    actual = np.asarray(store.media.open_image(preview_path), dtype=np.int16)
    assert np.abs(actual - expected).max() <= 1


def test_spo_completion_judge_scores_the_finished_images_of_the_candidates(models, tmp_path) -> None:
    path = models[4]
    side = resolution_of(path)
    spo = SPOConfig(
        pretrained_model=str(path),
        output_dir=tmp_path / "spo",
        prompts=tuple(PROMPTS),
        resolution=side,
        num_inference_steps=4,
        warmup_steps=1,
        max_timestep=999,
        num_candidates=2,
        step_judge="completion",
    )
    parts = load_parts(str(path))
    scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)
    scheduler.set_timesteps(4)
    text = conditioning(Features(parts, side, torch.device("cpu")), PROMPTS, False, side)
    pools = sample_pools(
        parts.unet, parts, scheduler, text, [torch.Generator().manual_seed(s) for s in (5, 6)], spo
    )
    images, timesteps = candidate_images(pools, parts.unet, parts, scheduler, text, spo)
    assert len(images) == 3 * 2 * 2 and set(timesteps) == {0}
    # The first pool's candidates (step 2), completed by hand.
    repeated = text.select(torch.arange(2).repeat_interleave(2))
    finished = complete(
        parts.unet,
        scheduler,
        repeated,
        pools[0].candidates.flatten(0, 1),
        from_step=2,
        guidance_scale=spo.guidance_scale,
    )
    for image, expected in zip(images[:4], decode(parts.vae, finished), strict=True):
        assert np.abs(np.asarray(image, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max() <= 1
    # The last pool's candidates are finished images already: their completion is themselves.
    last = decode(parts.vae, pools[-1].candidates.flatten(0, 1))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images[-4:], last, strict=True))


def test_vae_latent_statistics_are_one_convention_for_encoding_decoding_and_dpo(models, tmp_path) -> None:
    parts = load_parts(str(models[2]))
    vae, side = parts.vae, resolution_of(models[2])
    paths = []
    for i, colour in enumerate(("red", "blue")):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (side, side), colour).save(paths[-1])
    features = Features(parts, side, torch.device("cpu"))
    plain = features.latents(paths)
    channels = vae.config.latent_channels
    mean = torch.linspace(-0.5, 0.5, channels).view(1, -1, 1, 1)
    std = torch.linspace(0.5, 2.0, channels).view(1, -1, 1, 1)
    vae.register_to_config(latents_mean=mean.flatten().tolist(), latents_std=std.flatten().tolist())
    try:
        normalised = features.latents(paths)
        factor = vae.config.scaling_factor
        torch.testing.assert_close(normalised, (plain / factor - mean) * factor / std)
        # DPO's features are the same latents, and decoding undoes the normalisation.
        pair = PreferencePair(pair_id=1, prompt="a red square", winner=paths[0], loser=paths[1])
        dpo_mean, dpo_std, _ = features.images([pair], torch.zeros(2, 1, dtype=torch.bool))
        torch.testing.assert_close(dpo_mean[:, 0], normalised)
        assert dpo_std.shape == dpo_mean.shape
        with_stats = [np.asarray(image) for image in decode(vae, normalised)]
    finally:
        vae.register_to_config(latents_mean=None, latents_std=None)
    without_stats = [np.asarray(image) for image in decode(vae, plain)]
    for a, b in zip(with_stats, without_stats, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
