"""A seeded tiny CLIP model with an offline processor, built in code for scorer tests.

The tokenizer is the tiny CLIP BPE tokenizer of `tiny_models`, so prompts of the toy
vocabulary get one token per word; the image processor resizes and centre-crops to 32 x 32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_models import MAX_TOKENS, build_tiny_tokenizer
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

IMAGE_SIZE = 32
"""Side of the square CLIP input in pixels (4 x 4 patches of 8)."""


def build_tiny_clip_model(vocab_size: int, seed: int = 0) -> CLIPModel:
    """Builds a tiny CLIPModel: text and vision towers of hidden 32, 2 layers, projection 32.

    Args:
        vocab_size: Size of the tokenizer's vocabulary.
        seed: Seed of the weight initialisation.

    Returns:
        The model in eval mode.
    """
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": MAX_TOKENS,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    return CLIPModel(config).eval()


def build_tiny_clip_processor() -> CLIPProcessor:
    """Builds a CLIPProcessor offline: the tiny tokenizer and a 32 x 32 image processor."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=build_tiny_tokenizer())


def build_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """Builds a tiny CLIP model and its processor and saves both with ``save_pretrained``.

    Args:
        path: Folder to write; created if missing.
        seed: Seed of the weight initialisation.

    Returns:
        The folder, loadable with ``CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained``.
    """
    path = Path(path)
    processor = build_tiny_clip_processor()
    build_tiny_clip_model(len(processor.tokenizer), seed).save_pretrained(path)
    processor.save_pretrained(path)
    return path
