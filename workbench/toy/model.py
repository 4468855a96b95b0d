"""The parts of the toy Stable-Diffusion-format model, built offline from configs."""

from __future__ import annotations

import string

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from reward_models.shapes import all_captions

MAX_TOKENS = 16
"""Tokenizer ``model_max_length`` and text-encoder positions; the longest caption takes 10 tokens."""

VAE_CHANNELS = (32, 64, 64)
"""AutoencoderKL block widths: three levels, so the latent side is the image side / 4."""

LATENT_CHANNELS = 4


def caption_words() -> list[str]:
    """Every word of the shapes language, each of which becomes one token."""
    return list(dict.fromkeys(word for caption in all_captions() for word in caption.split()))


def build_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer built offline: one token per caption word, letters for anything else.

    transformers 5.x ignores ``vocab_file``/``merges_file`` in the constructor (every word would
    become ``<|endoftext|>``), so the vocabulary and merges are passed as objects. Merges are added
    until every word of the language is a single token; other text is spelled letter by letter.

    Returns:
        A tokenizer with ``model_max_length`` = `MAX_TOKENS`; the end-of-text token pads.
    """
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    words = caption_words()
    while True:
        tokenizer = CLIPTokenizer(
            vocab=dict(vocab), merges=list(merges), model_max_length=MAX_TOKENS, pad_token="<|endoftext|>"
        )
        split = [w for w in words if len(tokenizer.tokenize(w)) > 1]
        if not split:
            return tokenizer
        # Merges of one word can break another word's chain (the "ri" of "right" splits "triangle"),
        # so each word still in pieces gets merges that join its current pieces; appended merges
        # rank last and leave words that are already whole unchanged.
        for word in split:
            pieces = tokenizer.tokenize(word)
            merged = pieces[0]
            for piece in pieces[1:]:
                if (merged, piece) not in merges:
                    merges.append((merged, piece))
                merged += piece
                vocab.setdefault(merged, len(vocab))


def build_text_encoder(vocab_size: int, hidden: int) -> CLIPTextModel:
    """A two-layer CLIP text encoder of width ``hidden``."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def build_vae(image_size: int) -> AutoencoderKL:
    """An AutoencoderKL with widths `VAE_CHANNELS`, one layer per block and 4 latent channels."""
    levels = len(VAE_CHANNELS)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=32,
        sample_size=image_size,
    )


def build_unet(latent_size: int, width: int, cross_attention_dim: int) -> UNet2DConditionModel:
    """A three-level UNet (width, 2 width, 2 width) with cross-attention at every level.

    Three levels take an 8 x 8 latent down to 2 x 2, where every cell touches the zero padding on
    a different side: that is what lets a convolutional network tell the image's corners apart
    and so learn position words.
    """
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(width, 2 * width, 2 * width),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """DDIM with Stable Diffusion's scaled-linear betas (epsilon prediction unless told otherwise).

    A cosine schedule with epsilon prediction made DDIM sample garbage for this model.
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def assemble_pipeline(
    vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, unet: UNet2DConditionModel
) -> StableDiffusionPipeline:
    """Puts the parts together as an SD1.5-format pipeline without safety checker."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
