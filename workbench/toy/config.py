"""Settings of a toy-model training run (no heavy imports, so the CLI can build its options cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reward_models.shapes import held_out_captions


def _option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ToyTrainConfig:
    """Settings of a toy-model training run; every field's help text is in its metadata.

    The defaults are the settings of the shipped model.
    """

    seed: int = _option(0, "Seed of rendering, initialisation, batches and noise.")
    threads: int = _option(
        1, "torch CPU threads; one is fastest on a busy machine and makes reruns give the same weights."
    )
    image_size: int = _option(32, "Image side in pixels; a multiple of 16 (latents are a quarter of it).")
    pool_size: int = _option(10_000, "Renders of training captions drawn once and reused by both stages.")
    vae_steps: int = _option(800, "Autoencoder optimisation steps.")
    vae_batch_size: int = _option(32, "Images per autoencoder step.")
    vae_lr: float = _option(1e-3, "Autoencoder AdamW learning rate.")
    vae_kl_weight: float = _option(1e-4, "Weight of the KL term in the autoencoder loss.")
    unet_width: int = _option(32, "UNet width of the first level (levels are w, 2w, 2w); a multiple of 32.")
    text_width: int = _option(
        64, "Text-encoder hidden size, also the UNet cross-attention width; a multiple of 4."
    )
    unet_steps: int = _option(1100, "UNet and text-encoder optimisation steps.")
    batch_size: int = _option(64, "Latents per UNet step.")
    lr: float = _option(1e-3, "AdamW learning rate of UNet and text encoder, constant after warm-up.")
    warmup_steps: int = _option(100, "Linear learning-rate warm-up steps of the UNet stage.")
    ema_decay: float = _option(0.995, "Decay of the weight average that is saved; 0 saves the raw weights.")
    empty_caption_prob: float = _option(
        0.1, "Share of UNet samples trained with the empty caption (for guidance)."
    )
    eval_every: int = _option(
        100, "Evaluate held-out accuracy every this many UNet steps; 0 only at the end."
    )
    eval_captions: int = _option(
        60, "Held-out captions in each evaluation, one seed each; 0 skips evaluation."
    )

    def __post_init__(self) -> None:
        problems = []
        if self.image_size < 16 or self.image_size % 16:
            problems.append(f"image_size must be a positive multiple of 16, got {self.image_size}")
        if self.unet_width < 32 or self.unet_width % 32:
            problems.append(f"unet_width must be a positive multiple of 32, got {self.unet_width}")
        if self.text_width < 4 or self.text_width % 4:
            problems.append(f"text_width must be a positive multiple of 4, got {self.text_width}")
        for name in ("threads", "pool_size", "vae_batch_size", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("vae_steps", "unet_steps", "warmup_steps", "eval_every", "eval_captions"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("vae_lr", "lr"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.vae_kl_weight < 0:
            problems.append(f"vae_kl_weight must be >= 0, got {self.vae_kl_weight}")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.empty_caption_prob < 1:
            problems.append(f"empty_caption_prob must be in [0, 1), got {self.empty_caption_prob}")
        if self.eval_captions > len(held_out_captions()):
            problems.append(
                f"eval_captions must be at most {len(held_out_captions())}, got {self.eval_captions}"
            )
        if problems:
            raise ValueError("invalid ToyTrainConfig: " + "; ".join(problems))
