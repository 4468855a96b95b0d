"""Settings of the toy-model and toy-scorer training runs (no heavy imports, so the CLI can build its options cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reward_models.shapes import held_out_captions, train_captions


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


@dataclass(frozen=True)
class ToyScorerConfig:
    """Settings of a shapes-world scorer run (`workbench toy train-scorer`); help text in each field's metadata.

    The defaults are the settings of the shipped scorer.
    """

    seed: int = _option(0, "Seed of rendering, initialisation, batches and the toy model's candidates.")
    threads: int = _option(1, "torch CPU threads; one makes reruns give the same weights.")
    width: int = _option(64, "Hidden size of both towers and of the shared embedding; a multiple of 4.")
    layers: int = _option(4, "Transformer layers of each tower.")
    patch_size: int = _option(8, "Vision patch side in pixels; must divide the toy model's image side.")
    renders: int = _option(6_000, "Jittered renders of training captions for the contrastive stage.")
    captions: int = _option(
        432, "Training captions the toy model draws candidates for (evenly spaced; 0 uses renders only)."
    )
    candidates: int = _option(
        6, "Toy-model candidates per training caption (seeds 0, 1, ...); all pairs are judged."
    )
    mirror: bool = _option(
        True, "Also train on left-right mirrors of the candidates (left and right swapped in the caption)."
    )
    contrastive_steps: int = _option(1_500, "AdamW steps of the contrastive (CLIP loss) stage.")
    contrastive_batch: int = _option(128, "Images per contrastive step.")
    contrastive_lr: float = _option(
        2e-3, "Peak learning rate of the contrastive stage (warm-up, then cosine)."
    )
    preference_steps: int = _option(600, "AdamW steps of the pairwise preference stage; 0 skips it.")
    preference_batch: int = _option(64, "Oracle-judged pairs per preference step, ties included.")
    preference_lr: float = _option(5e-4, "Peak learning rate of the preference stage (warm-up, then cosine).")
    contrastive_weight: float = _option(
        0.5, "Weight of a contrastive batch added to each preference step, so the tower keeps its captions."
    )
    eval_captions: int = _option(
        432,
        "Held-out captions (evenly spaced) whose toy-model candidates measure pairwise accuracy; 0 skips.",
    )
    eval_candidates: int = _option(4, "Toy-model candidates per held-out caption for the evaluation pairs.")

    def __post_init__(self) -> None:
        problems = []
        if self.width < 4 or self.width % 4:
            problems.append(f"width must be a positive multiple of 4, got {self.width}")
        for name in ("threads", "layers", "patch_size", "contrastive_batch", "preference_batch"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("renders", "captions", "contrastive_steps", "preference_steps", "eval_captions"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("candidates", "eval_candidates"):
            if getattr(self, name) < 2:
                problems.append(
                    f"{name} must be at least 2 (pairs need two candidates), got {getattr(self, name)}"
                )
        for name in ("contrastive_lr", "preference_lr"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.contrastive_weight < 0:
            problems.append(f"contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if self.captions > len(train_captions()):
            problems.append(f"captions must be at most {len(train_captions())}, got {self.captions}")
        if self.eval_captions > len(held_out_captions()):
            problems.append(
                f"eval_captions must be at most {len(held_out_captions())}, got {self.eval_captions}"
            )
        if self.renders == 0 and self.captions == 0:
            problems.append("renders and captions are both 0: the contrastive stage has no images")
        if self.preference_steps and not self.captions:
            problems.append("preference_steps needs toy-model pairs: captions must be > 0")
        if problems:
            raise ValueError("invalid ToyScorerConfig: " + "; ".join(problems))
