"""Diffusion-DPO recipe on tiny SD1.5 and SDXL pipelines built in code."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from diffusers import DiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from safetensors.torch import load_file
from tiny_models import build_tiny_sd15, build_tiny_sdxl, subprocess_env, tiny_dpo_config, write_snapshot

from training.config import ConfigError, DPOConfig
from training.data import preference_pairs, read_pairs, stream_indices
from training.dpo import main, make_batch, pair_losses
from training.features import Features, cached_features
from training.parts import ModelLoadError, load_parts
from training.runs import NonFiniteError

REPO = Path(__file__).resolve().parents[1]
LORA_FILE = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "sd15": build_tiny_sd15(root / "sd15"),
        "sdxl_v": build_tiny_sdxl(root / "sdxl_v", prediction_type="v_prediction"),
        "snapshot": write_snapshot(root / "snapshot", n_pairs=5, n_ties=1),
    }


def config(tiny: dict[str, Path], out: Path, model: str = "sd15", **overrides) -> DPOConfig:
    return tiny_dpo_config(tiny[model], tiny["snapshot"], out, **overrides)


def lora_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / LORA_FILE)


def test_pairs_put_the_label_1_image_first_and_drop_ties(tiny):
    table = read_pairs(tiny["snapshot"])
    pairs = preference_pairs(tiny["snapshot"])
    assert [p.pair_id for p in pairs] == [1, 2, 3, 4]  # pair 5 is the tie
    for pair, row in zip(pairs, table.iter_rows(named=True), strict=False):
        assert str(pair.winner) == (row["image_0"] if row["label_0"] == 1.0 else row["image_1"])
    assert pairs[1].winner.name == Path(table["image_1"][1]).name  # odd pairs: image_1 wins


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"beta": -3}, "beta must be > 0, got -3"),
        ({"mode": "dpo"}, "mode must be one of lora, full, sft, got 'dpo'"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"warmup_fraction": 1.0}, r"warmup_fraction must be in \[0, 1\), got 1.0"),
        ({"resolution": 20}, "resolution must be a positive multiple of 8, got 20"),
    ],
)
def test_config_says_what_is_wrong(tiny, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(tiny, tmp_path, **overrides)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not a folder with model_index.json"):
        load_parts(str(tmp_path / "no-such-model"))


def lora_unet(path: Path, seed: int = 0) -> UNet2DConditionModel:
    """The recipe's LoRA set-up on a fresh UNet (B = 0, so it starts equal to the reference)."""
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").requires_grad_(False)
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_v"])
    )
    return unet


@pytest.mark.parametrize("model", ["sd15", "sdxl_v"])
def test_dpo_steps_on_a_seen_batch_raise_accuracy_and_margin(tiny, tmp_path, model):
    """Three AdamW steps on one fixed batch (same pairs, noise and timesteps) must raise the
    DPO margin above 0 and the implicit accuracy from 0.5 (model = reference) to 1."""
    cfg = config(tiny, tmp_path, model=model, batch_size=4, empty_prompt_dropout=0.0)
    parts = load_parts(cfg.pretrained_model)
    unet = lora_unet(tiny[model])
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-3)
    batch = make_batch(
        preference_pairs(cfg.dataset),
        Features(parts, 16, torch.device("cpu")),
        parts.noise_scheduler,
        cfg,
        range(4),
    )
    history = []
    for _ in range(4):
        loss, metrics = pair_losses(batch, unet, unet, None, parts.noise_scheduler, cfg, Accelerator())
        history.append((loss.mean().item(), metrics["implicit_accuracy"].item(), metrics["margin"].item()))
        loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    (first_loss, first_accuracy, first_margin), (last_loss, last_accuracy, last_margin) = (
        history[0],
        history[-1],
    )
    assert (first_accuracy, first_margin) == (0.5, 0.0)
    assert last_loss < first_loss
    assert last_accuracy == 1.0
    assert last_margin > 0.0


def test_lora_reference_is_the_adapter_free_unet(tiny):
    base = UNet2DConditionModel.from_pretrained(tiny["sd15"], subfolder="unet")
    unet = lora_unet(tiny["sd15"])
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # a trained adapter
    torch.manual_seed(1)
    sample, hidden = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 32)
    with torch.no_grad():
        expected = base(sample, 500, hidden).sample
        adapted = unet(sample, 500, hidden).sample
        unet.disable_adapters()
        reference = unet(sample, 500, hidden).sample
        unet.enable_adapters()
    torch.testing.assert_close(reference, expected)
    assert not torch.allclose(adapted, expected)


def test_lora_run_writes_metrics_checkpoints_and_a_loadable_lora(tiny, tmp_path):
    run = tmp_path / "run"
    final = main(config(tiny, run))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    expected = {
        "loss",
        "implicit_accuracy",
        "model_mse_w",
        "model_mse_l",
        "ref_mse_w",
        "ref_mse_l",
        "lr",
        "pairs_per_s",
    }
    assert expected <= metrics[0].keys()
    assert metrics[0]["loss"] == pytest.approx(
        0.693147, abs=1e-5
    )  # adapters start at zero: model = reference
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert any(name.endswith("lora.up.weight") and w.abs().sum() > 0 for name, w in lora_weights(run).items())

    pipe = DiffusionPipeline.from_pretrained(tiny["sd15"])
    before = pipe(
        "a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    pipe.load_lora_weights(final)
    after = pipe(
        "a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    assert not torch.allclose(torch.from_numpy(before.images), torch.from_numpy(after.images))
    to_q = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert to_q.scaling[next(iter(to_q.scaling))] == 2.0  # alpha 8 / rank 4 survived saving


def test_sft_run_trains_on_winners_without_a_reference(tiny, tmp_path):
    main(config(tiny, tmp_path, mode="sft", max_steps=1))
    (metrics,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics["loss"] == pytest.approx(metrics["model_mse_w"])
    assert "ref_mse_w" not in metrics
    assert (tmp_path / "final" / LORA_FILE).exists()


def test_sdxl_full_run_with_cached_features_saves_a_pipeline(tiny, tmp_path):
    cfg = config(tiny, tmp_path, model="sdxl_v", mode="full", cache_latents=True, max_steps=1)
    final = main(cfg)
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 1
    pipe = DiffusionPipeline.from_pretrained(final)
    original = UNet2DConditionModel.from_pretrained(tiny["sdxl_v"], subfolder="unet")
    trained = dict(pipe.unet.named_parameters())
    assert any(not torch.equal(p, trained[name]) for name, p in original.named_parameters())
    image = pipe("a blue square", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (16, 16, 3)


@pytest.mark.parametrize("model", ["sd15", "sdxl_v"])
def test_cached_features_equal_live_ones(tiny, tmp_path, model):
    cfg = config(tiny, tmp_path, model=model, cache_latents=True, empty_prompt_dropout=0.5)
    parts = load_parts(cfg.pretrained_model)
    pairs = preference_pairs(cfg.dataset)
    live = Features(parts, cfg.resolution, torch.device("cpu"))
    cached = cached_features(live, pairs, cfg, Accelerator())
    for positions in (range(0, 4), range(5, 9)):
        a = make_batch(pairs, live, parts.noise_scheduler, cfg, positions)
        b = make_batch(pairs, cached, parts.noise_scheduler, cfg, positions)
        for field, x in vars(a).items():
            y = vars(b)[field]
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, msg=field)


def test_non_finite_loss_stops_the_run_naming_the_step(tiny, tmp_path):
    """A learning rate of 1e30 blows the adapters up in the first update, so the second step's
    loss is not finite; the step-1 checkpoint stays usable."""
    with pytest.raises(NonFiniteError, match="at step 2"):
        main(config(tiny, tmp_path, learning_rate=1e30, max_steps=3))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]
    assert not (tmp_path / "final").exists()


def test_gradient_accumulation_2x1_equals_batch_2(tiny, tmp_path):
    main(config(tiny, tmp_path / "batch2", batch_size=2))
    main(config(tiny, tmp_path / "accum2", batch_size=1, gradient_accumulation_steps=2))
    a, b = lora_weights(tmp_path / "batch2"), lora_weights(tmp_path / "accum2")
    # Equal up to float reduction order, which Adam's first steps (about lr * sign(grad)) can
    # amplify for near-zero gradients: allow a tenth of one step's size.
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=0)


def test_run_killed_mid_training_resumes_to_the_same_weights(tiny, tmp_path):
    settings = {"max_steps": 6, "checkpoint_every": 2}
    main(config(tiny, tmp_path / "straight", **settings))

    cfg = config(tiny, tmp_path / "killed", **settings)
    (tmp_path / "killed.json").write_text(json.dumps(cfg.to_dict()))
    process = subprocess.Popen(
        [sys.executable, "-m", "training.dpo", "--config", str(tmp_path / "killed.json")],
        env=subprocess_env(torch.get_num_threads()),  # same threads, same float reductions
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, (
            "training ended before it could be killed"
        )
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "final").exists()

    main(cfg)
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged == list(range(1, 7))
    a, b = lora_weights(tmp_path / "straight"), lora_weights(tmp_path / "killed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


def test_two_processes_match_one_with_the_same_global_batch(tiny, tmp_path):
    main(config(tiny, tmp_path / "one", batch_size=2))
    cfg = config(tiny, tmp_path / "two", batch_size=1)
    (tmp_path / "two.json").write_text(json.dumps(cfg.to_dict()))
    # accelerate 1.15 starts a single process for `--cpu --num_processes 2` unless MPI is set up;
    # torch.distributed processes with gloo come from --multi_gpu plus ACCELERATE_USE_CPU.
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
    ]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["-m", "training.dpo", "--config", str(tmp_path / "two.json")]
    result = subprocess.run(
        command,
        env={**subprocess_env(1), "ACCELERATE_USE_CPU": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "two" / "checkpoints" / "step-00000002"
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    a, b = lora_weights(tmp_path / "one"), lora_weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=0)  # as for accumulation


def test_official_posterior_draws_and_per_image_flips_cached_equal_live(tiny, tmp_path):
    """vae_latents=sample and flip_unit=image (the official code's choices): the cache, which then
    holds the posterior's std and both views of every image, gives the same batches as encoding
    live; the draws differ from the posterior mean, and winners and losers get their own coins."""
    cfg = config(tiny, tmp_path, cache_latents=True, vae_latents="sample", flip_unit="image")
    parts = load_parts(cfg.pretrained_model)
    pairs = preference_pairs(cfg.dataset)
    live = Features(parts, cfg.resolution, torch.device("cpu"))
    cached = cached_features(live, pairs, cfg, Accelerator())
    positions = range(0, 16)
    a = make_batch(pairs, live, parts.noise_scheduler, cfg, positions)
    b = make_batch(pairs, cached, parts.noise_scheduler, cfg, positions)
    for field, x in vars(a).items():
        if x is not None:
            torch.testing.assert_close(x, vars(b)[field], msg=field)
    mean_cfg = config(tiny, tmp_path, cache_latents=True, flip_unit="image")
    means = make_batch(
        pairs,
        cached_features(live, pairs, mean_cfg, Accelerator()),
        parts.noise_scheduler,
        mean_cfg,
        positions,
    )
    assert not torch.allclose(a.latents, means.latents)
    assert (a.latents - means.latents).abs().max() < 1.0  # a draw near its mean, not another image

    generators = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + p) for p in positions]
    coins = torch.stack([torch.rand(3, generator=g)[1:] < 0.5 for g in generators])  # winner, loser
    assert (coins[:, 0] != coins[:, 1]).any()
    chosen = [pairs[i] for i in stream_indices(len(pairs), cfg.seed, 0, len(positions))]
    views = [live.images(chosen, torch.full((2, len(chosen)), flip))[0] for flip in (False, True)]
    for i, (flip_w, flip_l) in enumerate(coins.tolist()):
        for side, flipped in enumerate((flip_w, flip_l)):
            torch.testing.assert_close(means.latents[side, i], views[flipped][side, i])


def test_metrics_are_written_per_window_with_one_line_per_step(tiny, tmp_path):
    main(config(tiny, tmp_path, max_steps=5, log_every=2, checkpoint_every=10))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    # One host sync per window: the steps of a window share its throughput figure.
    rates = [m["pairs_per_s"] for m in metrics]
    assert rates[0] == rates[1] and rates[2] == rates[3]
    assert len({rates[0], rates[2], rates[4]}) == 3
    assert all(m["loss"] > 0 and m["grad_norm"] >= 0 for m in metrics)


def test_non_finite_step_inside_a_window_is_named_and_no_checkpoint_is_kept(tiny, tmp_path):
    with pytest.raises(NonFiniteError, match="at step 2"):
        main(config(tiny, tmp_path, learning_rate=1e30, max_steps=4, log_every=4, checkpoint_every=4))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
