"""The toy text-to-image model: tokenizer, shipped pipeline, training command and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer
from typer.testing import CliRunner

from reward_models.shapes import all_captions, held_out_captions
from workbench.cli import app
from workbench.toy import TOY_IMAGE_SIZE, TOY_MODEL_DIR
from workbench.toy.config import ToyTrainConfig
from workbench.toy.evaluate import evaluate_pipeline
from workbench.toy.model import MAX_TOKENS, build_tokenizer, caption_words

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shipped() -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(TOY_MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ids(tokenizer: CLIPTokenizer) -> list[list[int]]:
    return tokenizer(list(all_captions()), padding="max_length", max_length=MAX_TOKENS).input_ids


def test_tokenizer_one_token_per_word_distinct_ids_and_round_trip(tmp_path):
    tokenizer = build_tokenizer()
    for word in caption_words():
        assert tokenizer.tokenize(word) == [word + "</w>"]
    ids = _ids(tokenizer)
    assert len({tuple(x) for x in ids}) == len(all_captions())
    assert all(len(x) == MAX_TOKENS for x in ids)
    # Text outside the language is spelled, not mapped to the unknown token.
    assert tokenizer.unk_token_id not in tokenizer("a dog").input_ids[1:-1]
    tokenizer.save_pretrained(tmp_path)
    assert _ids(CLIPTokenizer.from_pretrained(tmp_path)) == ids


def test_shipped_model_loads_in_fp32_and_is_deterministic(shipped):
    assert all(
        p.dtype == torch.float32
        for m in (shipped.unet, shipped.vae, shipped.text_encoder)
        for p in m.parameters()
    )
    assert shipped.safety_checker is None
    assert _ids(shipped.tokenizer) == _ids(build_tokenizer())

    def draw(seed: int):
        return shipped(
            "a large green square at the bottom left",
            num_inference_steps=10,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]

    first, again, other = draw(0), draw(0), draw(1)
    assert first.size == (TOY_IMAGE_SIZE, TOY_IMAGE_SIZE)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_shipped_model_draws_what_it_is_told(shipped):
    captions = held_out_captions()[::16]
    result = evaluate_pipeline(shipped, captions, seeds=(0,), return_images=True)
    assert result.n_images == len(captions) == len(result.images) == 27
    assert {r["caption"] for r in result.records} == set(captions)
    # Chance is 1/8 for colour, 1/4 for shape and 1/9 for position.
    assert result.accuracy["colour"] >= 0.6
    assert result.accuracy["shape"] >= 0.5
    assert result.accuracy["position"] >= 0.6
    # Deliberately imperfect, so that preference training has something to fix.
    assert 0.3 <= result.overall <= 0.9
    assert result.overall <= result.mean_score <= 1


def test_config_validation():
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 16.*unet_width"):
        ToyTrainConfig(image_size=20, unet_width=48)
    with pytest.raises(ValueError, match="ema_decay"):
        ToyTrainConfig(ema_decay=1.0)
    assert ToyTrainConfig().image_size == TOY_IMAGE_SIZE


@pytest.mark.slow
def test_train_command_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "toy"
    tiny = [
        "--pool-size",
        "16",
        "--vae-steps",
        "2",
        "--vae-batch-size",
        "4",
        "--unet-steps",
        "2",
        "--batch-size",
        "4",
    ]
    result = CliRunner().invoke(
        app, ["toy", "train", "--out", str(out), *tiny, "--eval-captions", "2", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "training_config.json").read_text())["seed"] == 3
    pipe = StableDiffusionPipeline.from_pretrained(out)
    image = pipe("a red circle in the center", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()

    evaluated = CliRunner().invoke(
        app, ["toy", "evaluate", "--model", str(out), "--steps", "2", "--guidance", "1"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert summary["n_images"] == len(held_out_captions())
    assert set(summary) >= {"overall", "colour", "shape", "position", "size"}

    bad = CliRunner().invoke(app, ["toy", "train", "--out", str(out), "--image-size", "20"])
    assert bad.exit_code != 0 and "multiple of 16" in bad.output
