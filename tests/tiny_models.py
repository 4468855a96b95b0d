"""Seeded tiny diffusers pipelines and dataset snapshots, built in code for tests.

Nothing here downloads anything: every model is built from a config with a fixed seed and saved
with ``save_pretrained``, so tests load it back through the same ``from_pretrained`` code path as
real SD1.5 / SDXL weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from training.config import DPOConfig
from workbench.toy.model import build_scheduler

WORDS = (
    "a an the of at in on and with small large red green blue yellow white black purple orange "
    "circle square triangle cross top bottom left right center middle photo picture image cat dog"
).split()
"""Words that become a single token each; anything else is spelled letter by letter."""

MAX_TOKENS = 16
"""Tokenizer model_max_length and text encoder positions: toy captions are a few words."""


def build_tiny_tokenizer() -> CLIPTokenizer:
    """Builds a CLIP BPE tokenizer offline from an in-memory vocabulary.

    The vocabulary holds the special tokens, every lowercase letter and digit (alone and as a
    word end ``x</w>``) and, through a chain of merges per word, each of `WORDS` as one token.
    transformers 5.x ignores ``vocab_file``/``merges_file``, so vocab and merges are passed as
    objects.

    Returns:
        A tokenizer with ``model_max_length`` = `MAX_TOKENS`.
    """
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            if (merged, symbol) not in merges:
                merges.append((merged, symbol))
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def _text_config(vocab_size: int, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _tiny_vae(blocks: int = 2) -> AutoencoderKL:
    """A VAE that downsamples by 2 ** (blocks - 1): 2 by default, 4 like the toy model's, 8 like SD's."""
    return AutoencoderKL(
        block_out_channels=(32,) + (64,) * (blocks - 1),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=8 * 2 ** (blocks - 1),
    )


def build_tiny_sd15(
    path: str | Path, prediction_type: str = "epsilon", seed: int = 0, vae_blocks: int = 2
) -> Path:
    """Builds a tiny SD1.5-format pipeline and saves it with ``save_pretrained``.

    UNet (32, 64) with one layer per block and cross-attention 32 (latents 4 x 8 x 8, images
    16 x 16), AutoencoderKL (32, 64), CLIPTextModel hidden 32 with 2 layers, an offline CLIP
    tokenizer and a DDIM scheduler; no safety checker.

    Args:
        path: Folder to write; created if missing.
        prediction_type: Scheduler prediction type, ``"epsilon"`` or ``"v_prediction"``.
        seed: Seed of the weight initialisation.
        vae_blocks: VAE down blocks; the VAE downsamples by 2 ** (vae_blocks - 1), so images are
            8 x that factor pixels wide.

    Returns:
        The folder, loadable with ``DiffusionPipeline.from_pretrained``.
    """
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(vae_blocks),
        text_encoder=CLIPTextModel(_text_config(len(tokenizer))),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = Path(path)
    pipe.save_pretrained(path)
    return path


def build_tiny_sdxl(path: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Builds a tiny SDXL-format pipeline and saves it with ``save_pretrained``.

    Two text encoders (CLIPTextModel and CLIPTextModelWithProjection, hidden 32 each, so the
    UNet cross-attends to 64 features), a UNet with ``addition_embed_type="text_time"`` whose
    added embedding takes 6 time ids x 8 + the 32-dim pooled text embedding, latents 4 x 8 x 8
    and images 16 x 16.

    Args:
        path: Folder to write; created if missing.
        prediction_type: Scheduler prediction type, ``"epsilon"`` or ``"v_prediction"``.
        seed: Seed of the weight initialisation.

    Returns:
        The folder, loadable with ``DiffusionPipeline.from_pretrained``.
    """
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    addition_time_embed_dim = 8
    pooled_dim = 32
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + pooled_dim,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(len(tokenizer))),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(len(tokenizer), projection_dim=pooled_dim)),
        tokenizer=tokenizer,
        tokenizer_2=build_tiny_tokenizer(),
        unet=unet,
        scheduler=build_scheduler(prediction_type),
    )
    path = Path(path)
    pipe.save_pretrained(path)
    return path


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40)}
SHAPES = ("circle", "square")


def draw_shape(colour: str, shape: str, size: int = 16, offset: int = 0) -> Image.Image:
    """Draws one coloured shape on black.

    Args:
        colour: A key of `COLOURS`.
        shape: ``"circle"`` or ``"square"``.
        size: Width and height in pixels.
        offset: Shift of the shape to the right in pixels (makes distinct images).

    Returns:
        An RGB image.
    """
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    box = (size // 4 + offset, size // 4, 3 * size // 4 + offset, 3 * size // 4)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.rectangle(box, fill=COLOURS[colour])
    return image


def write_snapshot(folder: str | Path, n_pairs: int = 8, n_ties: int = 0, size: int = 16) -> Path:
    """Writes a small dataset snapshot in the documented format (docs/dataset-snapshot.md).

    Pair ``i`` has the prompt ``"a <colour> <shape>"``; the matching drawing wins against one
    of another colour. The winner alternates between ``image_0`` (even ``i``) and ``image_1``
    (odd ``i``) so that tests notice a swapped label. The last ``n_ties`` pairs are ties.

    Args:
        folder: Snapshot folder to create (``pairs.parquet``, ``images/``, ``manifest.json``).
        n_pairs: Number of pairs.
        n_ties: How many of them are ties (label 0.5 / 0.5).
        size: Image width and height in pixels.

    Returns:
        The snapshot folder.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS)

    def save(image: Image.Image) -> tuple[str, str]:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        uid = hashlib.sha256(data).hexdigest()
        (folder / "images" / f"{uid}.png").write_bytes(data)
        return f"images/{uid}.png", uid

    rows = []
    for i in range(n_pairs):
        colour, shape = colours[i % len(colours)], SHAPES[(i // len(colours)) % len(SHAPES)]
        good = save(draw_shape(colour, shape, size, offset=i % 3))
        bad = save(draw_shape(colours[(i + 1) % len(colours)], shape, size, offset=-(i % 3)))
        first, second = (good, bad) if i % 2 == 0 else (bad, good)
        tie = i >= n_pairs - n_ties
        label_0 = 0.5 if tie else float(i % 2 == 0)
        rows.append(
            {
                "pair_id": i + 1,
                "prompt": f"a {colour} {shape}",
                "image_0": first[0],
                "image_1": second[0],
                "image_0_uid": first[1],
                "image_1_uid": second[1],
                "label_0": label_0,
                "label_1": 1.0 - label_0,
                "kind": "final",
                "timestep": None,
                "n_judgments": 1,
                "agreement": 1.0,
            }
        )
    schema = {
        "pair_id": pl.Int64,
        "prompt": pl.String,
        "image_0": pl.String,
        "image_1": pl.String,
        "image_0_uid": pl.String,
        "image_1_uid": pl.String,
        "label_0": pl.Float64,
        "label_1": pl.Float64,
        "kind": pl.String,
        "timestep": pl.Int64,
        "n_judgments": pl.Int64,
        "agreement": pl.Float64,
    }
    table = pl.DataFrame(rows, schema=schema)
    table.write_parquet(folder / "pairs.parquet")
    content = table.drop("image_0", "image_1").sort("pair_id").write_csv()
    manifest = {
        "version_id": folder.name,
        "name": "tiny test snapshot",
        "content_hash": hashlib.sha256(content.encode()).hexdigest(),
        "counts": {"pairs": n_pairs, "ties": n_ties},
        "filters": {},
        "created_at": datetime.now(UTC).isoformat(),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def tiny_dpo_config(model: str | Path, snapshot: Path, out: Path, **overrides) -> DPOConfig:
    """A two-step LoRA DPO config on a tiny pipeline and snapshot; ``overrides`` replace any option."""
    options = {
        "pretrained_model": str(model),
        "dataset": snapshot,
        "output_dir": out,
        "resolution": 16,
        "batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "warmup_fraction": 0.0,
        "checkpoint_every": 1,
        "lora_rank": 4,
        "lora_alpha": 8.0,
    }
    return DPOConfig(**{**options, **overrides})


def subprocess_env(threads: int) -> dict[str, str]:
    """The environment for a subprocess that imports this repository with ``threads`` torch threads."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
