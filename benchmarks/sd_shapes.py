"""SD1.5- and SDXL-shaped components with random weights, for the GPU benchmarks; nothing is downloaded.

`build_parts` gives the components in memory (the training benchmark), `save_pipeline` writes them
as a pipeline folder that loads as real weights would (the generation benchmark). ``tiny`` swaps in
shapes small enough for the CPU.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from training.parts import Parts
from workbench.toy.model import assemble_pipeline


def offline_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with one token per letter (no merges) and SD's 77 positions."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token="<|endoftext|>")


def text_encoder(hidden: int, layers: int, projection: int | None = None) -> CLIPTextModel:
    """A CLIP text encoder of CLIP's proportions (MLP 4 x hidden, 64-wide heads, 77 positions);
    with ``projection``, the pooled-and-projected variant SDXL's second encoder is."""
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def build_parts(family: str, tiny: bool, device: torch.device) -> tuple[Parts, int]:
    """The components of an SD1.5- or SDXL-shaped pipeline with random weights, and the image side."""
    torch.manual_seed(0)
    with torch.device(device):
        if tiny:
            vae = AutoencoderKL(
                block_out_channels=(32, 64),
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                latent_channels=4,
                layers_per_block=1,
            )
            unet_shape = {
                "sample_size": 8,
                "block_out_channels": (32, 64),
                "layers_per_block": 1,
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                "attention_head_dim": 8,
            }
            encoders = [text_encoder(32, 2)] + (
                [text_encoder(32, 2, projection=32)] if family == "sdxl" else []
            )
        else:
            vae = AutoencoderKL(
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2,
                latent_channels=4,
                scaling_factor=0.18215 if family == "sd15" else 0.13025,
            )
            if family == "sd15":
                unet_shape, encoders = {"sample_size": 64}, [text_encoder(768, 12)]
            else:
                unet_shape = {
                    "sample_size": 128,
                    "block_out_channels": (320, 640, 1280),
                    "layers_per_block": 2,
                    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    "transformer_layers_per_block": (1, 2, 10),
                    "attention_head_dim": (5, 10, 20),
                }
                encoders = [text_encoder(768, 12), text_encoder(1280, 32, projection=1280)]
        cross = sum(e.config.hidden_size for e in encoders)
        if family == "sdxl":
            time_dim = 8 if tiny else 256
            pooled = encoders[1].config.projection_dim
            unet_shape |= {
                "use_linear_projection": True,
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": time_dim,
                "projection_class_embeddings_input_dim": 6 * time_dim + pooled,
            }
        unet = UNet2DConditionModel(cross_attention_dim=cross, **unet_shape)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sdxl = family == "sdxl"
    parts = Parts(
        unet=unet,
        vae=vae,
        tokenizer=offline_tokenizer(),
        text_encoder=encoders[0],
        tokenizer_2=offline_tokenizer() if sdxl else None,
        text_encoder_2=encoders[1] if sdxl else None,
        noise_scheduler=scheduler,
        is_sdxl=sdxl,
    )
    side = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    return parts, side


def save_pipeline(folder: Path, family: str, tiny: bool, device: torch.device) -> None:
    """Writes `build_parts`' components (float32) to ``folder`` as a StableDiffusionPipeline with a
    DDIM scheduler of SD's betas and no safety checker.

    Raises:
        ValueError: ``family`` is not ``"sd15"``, the only family written as a pipeline.
    """
    if family != "sd15":
        raise ValueError(f"save_pipeline writes sd15 pipelines only, got family {family!r}")
    parts, _ = build_parts(family, tiny, device)
    pipe = assemble_pipeline(parts.vae, parts.text_encoder, parts.tokenizer, parts.unet)
    pipe.save_pretrained(folder)
