"""SPO on a tiny SD1.5 with tiny CLIP scorers: pools, pairs, one LoRA update, a loadable LoRA."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file
from tiny_clip import build_tiny_clip
from tiny_models import build_tiny_sd15, build_tiny_sdxl, subprocess_env

from reward_models.base import Scorer
from reward_models.clip import ClipScorer, load_clip
from reward_models.shapes import held_out_captions, train_captions
from reward_models.step_aware import StepAwareCLIP
from training.config import ConfigError
from training.spo import SPOConfig, main
from workbench.evaluation import score_pipeline
from workbench.pipelines import fuse_lora, load_pipeline
from workbench.toy import TOY_IMAGE_SIZE, TOY_MODEL_DIR

PROMPTS = ("a red circle", "a blue square")


class BrightnessScorer(Scorer):
    """A real step-aware scorer of the simplest kind: mean brightness; it keeps the timesteps it was asked about."""

    name = "brightness"
    version = "1"
    step_aware = True

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign  # -1 prefers darker images
        self.timesteps: list[int] = []

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str], timesteps: Sequence[int] | None = None) -> np.ndarray:
        self._check_lengths(images, prompts, timesteps)
        self.timesteps.extend(timesteps or ())
        return self.sign * np.array([np.asarray(image, dtype=np.float64).mean() for image in images])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return build_tiny_sd15(root / "sd"), build_tiny_clip(root / "clip")


def config(sd_path, output_dir, **overrides) -> SPOConfig:
    options = {
        "pretrained_model": str(sd_path),
        "output_dir": output_dir,
        "prompts": PROMPTS,
        "resolution": 16,
        "num_inference_steps": 8,
        "warmup_steps": 2,
        "prompts_per_step": 2,
        "max_steps": 1,
        # Random tiny models score candidates almost alike: keep every pair that has a winner.
        "threshold": 0.0,
    }
    return SPOConfig(**{**options, **overrides})


def test_one_step_with_the_clip_scorer_trains_the_lora(models, tmp_path):
    sd, clip = models
    final = main(config(sd, tmp_path / "run", pairs_per_update=None), ClipScorer.from_pretrained(clip))

    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 8 steps of 125 (t = 876, 751, ..., 1), 2 warm-up steps, then t <= 750: 6 pools per chain.
    assert record["pools"] == 12
    pooled = {key: value for key, value in record.items() if key.startswith("pairs_t")}
    assert sorted(pooled) == sorted(f"pairs_t{t}" for t in (626, 501, 376, 251, 126, 1))
    assert record["pairs"] == sum(pooled.values()) > 0
    assert np.isfinite(record["loss"]) and record["grad_norm"] > 0
    # Policy = reference before the first update: every ratio is 1 and the loss is log 2.
    assert record["updates"] == 1
    assert record["loss"] == pytest.approx(np.log(2), abs=1e-5)

    # LoRA B matrices start at zero; one step moved them.
    weights = load_file(final / "pytorch_lora_weights.safetensors")
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name or "lora.up" in name]
    assert lora_b and any(tensor.abs().max() > 0 for tensor in lora_b)

    # The saved LoRA loads into the pipeline and changes its UNet output.
    pipe = DiffusionPipeline.from_pretrained(sd)
    latents, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    hidden = pipe.encode_prompt(PROMPTS[0], "cpu", 1, False)[0]
    with torch.no_grad():
        before = pipe.unet(latents, t, hidden).sample
        pipe.load_lora_weights(final)
        after = pipe.unet(latents, t, hidden).sample
    assert not torch.equal(before, after)


def test_step_aware_scorer_is_asked_at_the_candidates_timestep(models, tmp_path):
    sd, _ = models
    scorer = BrightnessScorer()
    main(config(sd, tmp_path / "run", prompts_per_step=1, num_candidates=3), scorer)
    # Candidates x_{t-1} of the pools at t = 626 .. 126 are scored at t - 125; the last step's are finished (t = 0).
    expected = [t for t in (501, 376, 251, 126, 1, 0) for _ in range(3)]
    assert scorer.timesteps == expected


def test_spm_from_a_spec_and_a_high_threshold_keep_no_pair(models, tmp_path):
    sd, clip_path = models
    clip, processor = load_clip(clip_path)
    spm = StepAwareCLIP.from_clip(clip).save_pretrained(tmp_path / "spm", processor)
    final = main(config(sd, tmp_path / "run", scorer=f"spm:{spm}", threshold=0.99, prompts_per_step=1))

    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["pairs"] == 0 and record["pools"] == 6 and "loss" not in record
    weights = load_file(final / "pytorch_lora_weights.safetensors")
    assert all(tensor.abs().max() == 0 for name, tensor in weights.items() if "lora_B" in name or "lora.up" in name)


def test_sdxl_in_bf16_from_the_module_entry_point(models, tmp_path):
    # A process holds one accelerate precision, so the bf16 run gets its own, as `accelerate launch` gives it.
    sdxl = build_tiny_sdxl(tmp_path / "sdxl")
    cfg = config(sdxl, tmp_path / "run", prompts_per_step=1, num_candidates=2, mixed_precision="bf16")
    cfg.scorer = f"clip:{models[1]}"
    (tmp_path / "run.json").write_text(json.dumps(cfg.to_dict()))
    subprocess.run([sys.executable, "-m", "training.spo", "--config", str(tmp_path / "run.json")], check=True)

    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["pairs"] > 0 and np.isfinite(record["loss"])
    DiffusionPipeline.from_pretrained(sdxl).load_lora_weights(tmp_path / "run" / "final")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_candidates": 1}, "num_candidates must be >= 2"),
        ({"eta": 0.0}, "eta must be > 0"),
        ({"warmup_steps": 8}, r"warmup_steps must be in \[0, num_inference_steps = 8\)"),
        ({"threshold": 1.0}, r"threshold must be in \[0, 1\)"),
        ({"prompts": ()}, "give exactly one of prompts and prompts_file"),
        ({"min_timestep": 800, "max_timestep": 700}, "need 0 <= min_timestep <= max_timestep"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \(0, 1\), got 1.0"),
    ],
)
def test_config_says_what_is_wrong(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config("unused", tmp_path, **overrides)


def test_prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\n  a blue square  \n")
    assert config("unused", tmp_path, prompts=(), prompts_file=path).prompt_list() == ["a red circle", "a blue square"]


def test_kept_pairs_are_shuffled_into_updates_of_pairs_per_update(models, tmp_path):
    sd, _ = models
    runs = {}
    for name, per_update in (("two", 2), ("all", None)):
        final = main(config(sd, tmp_path / name, pairs_per_update=per_update), BrightnessScorer())
        (record,) = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = record, load_file(final / "pytorch_lora_weights.safetensors")
    (two, two_weights), (whole, whole_weights) = runs["two"], runs["all"]
    # The same chains keep the same pairs; split two by two they make ceil(pairs / 2) updates.
    assert two["pairs"] == whole["pairs"] >= 3
    assert (two["updates"], whole["updates"]) == (-(-two["pairs"] // 2), 1)
    # One update sees policy = reference (loss log 2); later updates see the moved policy.
    assert whole["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert abs(two["loss"] - np.log(2)) > 1e-6
    assert any(not torch.equal(two_weights[k], whole_weights[k]) for k in two_weights)


def test_two_processes_split_their_pairs_into_shared_updates(models, tmp_path):
    sd, clip = models
    cfg = config(sd, tmp_path / "two", pairs_per_update=2, max_steps=2, scorer=f"clip:{clip}")
    (tmp_path / "two.json").write_text(json.dumps(cfg.to_dict()))
    # torch.distributed processes with gloo on the CPU: --multi_gpu plus ACCELERATE_USE_CPU (see test_dpo).
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["-m", "training.spo", "--config", str(tmp_path / "two.json")]
    result = subprocess.run(
        command, env={**subprocess_env(1), "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        if record["pairs"]:
            # Pairs of both processes count: 2 per process per update.
            assert record["updates"] == -(-record["pairs"] // 4)
    assert (tmp_path / "two" / "final" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["brighter", "darker"])
def test_spo_moves_the_shipped_model_the_way_its_judge_prefers(tmp_path, sign) -> None:
    """Six SPO steps with a judge that prefers brighter (or darker) candidates make every held-out
    image of the toy model brighter (or darker): the pairs, the loss's sign and the update agree."""
    cfg = SPOConfig(
        pretrained_model=str(TOY_MODEL_DIR),
        output_dir=tmp_path / "run",
        prompts=train_captions()[:50],
        resolution=TOY_IMAGE_SIZE,
        guidance_scale=3.0,
        warmup_steps=0,
        max_timestep=951,
        threshold=0.0,
        prompts_per_step=2,
        max_steps=6,
        learning_rate=5e-4,
    )
    final = main(cfg, BrightnessScorer(sign))
    captions = list(held_out_captions()[:16])
    before = [s for _, _, s in score_pipeline(load_pipeline(TOY_MODEL_DIR), BrightnessScorer(), captions)]
    after = [s for _, _, s in score_pipeline(fuse_lora(load_pipeline(TOY_MODEL_DIR), final), BrightnessScorer(), captions)]
    assert all(sign * (b - a) > 0 for a, b in zip(before, after, strict=True)), (before, after)


def test_weight_average_is_the_written_lora_and_resumes_with_the_run(models, tmp_path):
    sd, _ = models
    options = {"pairs_per_update": None, "max_steps": 2, "checkpoint_every": 1, "keep_checkpoints": 2}
    last = main(config(sd, tmp_path / "last", **options), BrightnessScorer())
    final = main(config(sd, tmp_path / "avg", ema_decay=0.5, **options), BrightnessScorer())
    untimed = [
        [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")} for line in lines]
        for lines in ((tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("last", "avg"))
    ]
    assert untimed[0] == untimed[1]  # the average only watches: training is the same

    def lora(folder: Path) -> dict[str, torch.Tensor]:
        return load_file(folder / "pytorch_lora_weights.safetensors")

    checkpoints = sorted((tmp_path / "avg" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-00000001", "step-00000002"]
    first, moved = lora(checkpoints[0] / "average"), lora(last)
    DiffusionPipeline.from_pretrained(sd).load_lora_weights(checkpoints[0] / "average")
    # Update 1 takes the weights as they are; update 2 mixes with decay min(0.5, (1 + 1) / (10 + 1)).
    decay = 2 / 11
    expected = {name: decay * first[name] + (1 - decay) * moved[name] for name in moved}
    averaged_weights = lora(final)
    assert any(not torch.equal(first[name], moved[name]) for name in moved)
    for name, tensor in expected.items():
        torch.testing.assert_close(averaged_weights[name], tensor, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(lora(checkpoints[1] / "average")[name], averaged_weights[name], rtol=0, atol=0)

    # Killed after round 1: the rerun resumes the average from the checkpoint and ends with the same LoRA.
    shutil.rmtree(checkpoints[1])
    shutil.rmtree(final)
    resumed = lora(main(config(sd, tmp_path / "avg", ema_decay=0.5, **options), BrightnessScorer()))
    for name, tensor in averaged_weights.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("schedule", "warmup", "factors"),
    [
        ("constant", 0, [1, 1, 1, 1]),
        ("linear", 0, [1, 0.75, 0.5, 0.25]),
        ("cosine", 0, [1, 0.853553, 0.5, 0.146447]),
        ("constant", 2, [0, 0.5, 1, 1]),
        ("cosine", 2, [0, 0.5, 1, 0.5]),
    ],
)
def test_learning_rate_schedule_decays_over_the_rounds_and_resumes(models, tmp_path, schedule, warmup, factors):
    sd, _ = models
    options = {
        "max_steps": 4,
        "checkpoint_every": 1,
        "keep_checkpoints": 4,
        "lr_schedule": schedule,
        "lr_warmup_rounds": warmup,
        "learning_rate": 1e-4,
    }
    run = tmp_path / f"{schedule}-{warmup}"
    final = load_file(main(config(sd, run, **options), BrightnessScorer()) / "pytorch_lora_weights.safetensors")

    def rates() -> list[float]:
        return [json.loads(line)["learning_rate"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    # cosine at round r of 4: (1 + cos(pi r / 4)) / 2; after w warm-up rounds (1 + cos(pi (r - w) / (4 - w))) / 2
    assert rates() == pytest.approx([1e-4 * f for f in factors], rel=1e-5)

    # Killed after round 2: the rerun resumes the schedule where it stood and trains to the same LoRA.
    for checkpoint in sorted((run / "checkpoints").iterdir())[2:]:
        shutil.rmtree(checkpoint)
    shutil.rmtree(run / "final")
    resumed = load_file(main(config(sd, run, **options), BrightnessScorer()) / "pytorch_lora_weights.safetensors")
    assert rates() == pytest.approx([1e-4 * f for f in factors], rel=1e-5)
    for name, tensor in final.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0)
