"""Settings of the toy-model and toy-scorer training runs (no heavy imports, so the CLI can build its options cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

from reward_models.shapes import held_out_captions, train_captions
from training.options import TypedConfig, option

_HELD_OUT_CAPTIONS = len(held_out_captions())
_TRAIN_CAPTIONS = len(train_captions())


def _multiple_problems(config: TypedConfig, steps: dict[str, int]) -> list[str]:
    """Problems of fields that must be positive multiples of a step (field name -> step)."""
    return [
        f"{name} must be a positive multiple of {step}, got {value}"
        for name, step in steps.items()
        if (value := getattr(config, name)) < step or value % step
    ]


@dataclass(frozen=True)
class ToyTrainConfig(TypedConfig):
    """Settings of a toy-model training run; every field's help text is in its metadata.

    The defaults are the settings of the shipped model.
    """

    seed: int = option(0, "Seed of rendering, initialisation, batches and noise.")
    threads: int = option(
        1, "torch CPU threads; one is fastest on a busy machine and makes reruns give the same weights.", ge=1
    )
    image_size: int = option(32, "Image side in pixels; a multiple of 16 (latents are a quarter of it).")
    pool_size: int = option(
        10_000, "Renders of training captions drawn once and reused by both stages.", ge=1
    )
    vae_steps: int = option(800, "Autoencoder optimisation steps.", ge=0)
    vae_batch_size: int = option(32, "Images per autoencoder step.", ge=1)
    vae_lr: float = option(1e-3, "Autoencoder AdamW learning rate.", gt=0)
    vae_kl_weight: float = option(1e-4, "Weight of the KL term in the autoencoder loss.", ge=0)
    unet_width: int = option(32, "UNet width of the first level (levels are w, 2w, 2w); a multiple of 32.")
    text_width: int = option(
        64, "Text-encoder hidden size, also the UNet cross-attention width; a multiple of 4."
    )
    unet_steps: int = option(1100, "UNet and text-encoder optimisation steps.", ge=0)
    batch_size: int = option(64, "Latents per UNet step.", ge=1)
    lr: float = option(1e-3, "AdamW learning rate of UNet and text encoder, constant after warm-up.", gt=0)
    warmup_steps: int = option(100, "Linear learning-rate warm-up steps of the UNet stage.", ge=0)
    ema_decay: float = option(
        0.995, "Decay of the weight average that is saved; 0 saves the raw weights.", ge=0, lt=1
    )
    empty_caption_prob: float = option(
        0.1, "Share of UNet samples trained with the empty caption (for guidance).", ge=0, lt=1
    )
    eval_every: int = option(
        100, "Evaluate held-out accuracy every this many UNet steps; 0 only at the end.", ge=0
    )
    eval_captions: int = option(
        60,
        "Held-out captions in each evaluation, one seed each; 0 skips evaluation.",
        ge=0,
        le=_HELD_OUT_CAPTIONS,
    )

    def problems(self) -> list[str]:
        """The typed checks' problems, then the sizes that must be multiples."""
        return super().problems() + _multiple_problems(
            self, {"image_size": 16, "unet_width": 32, "text_width": 4}
        )


@dataclass(frozen=True)
class ToyScorerConfig(TypedConfig):
    """Settings of a shapes-world scorer run (`workbench toy train-scorer`); help text in each field's metadata.

    The defaults are the settings of the shipped scorer.
    """

    seed: int = option(0, "Seed of rendering, initialisation, batches and the toy model's candidates.")
    threads: int = option(1, "torch CPU threads; one makes reruns give the same weights.", ge=1)
    width: int = option(64, "Hidden size of both towers and of the shared embedding; a multiple of 4.")
    layers: int = option(4, "Transformer layers of each tower.", ge=1)
    patch_size: int = option(8, "Vision patch side in pixels; must divide the toy model's image side.", ge=1)
    renders: int = option(6_000, "Jittered renders of training captions for the contrastive stage.", ge=0)
    captions: int = option(
        432,
        "Training captions the toy model draws candidates for (evenly spaced; 0 uses renders only).",
        ge=0,
        le=_TRAIN_CAPTIONS,
    )
    candidates: int = option(
        6, "Toy-model candidates per training caption (seeds 0, 1, ...); all pairs are judged."
    )
    mirror: bool = option(
        True, "Also train on left-right mirrors of the candidates (left and right swapped in the caption)."
    )
    contrastive_steps: int = option(1_500, "AdamW steps of the contrastive (CLIP loss) stage.", ge=0)
    contrastive_batch: int = option(128, "Images per contrastive step.", ge=1)
    contrastive_lr: float = option(
        2e-3, "Peak learning rate of the contrastive stage (warm-up, then cosine).", gt=0
    )
    preference_steps: int = option(600, "AdamW steps of the pairwise preference stage; 0 skips it.", ge=0)
    preference_batch: int = option(64, "Oracle-judged pairs per preference step, ties included.", ge=1)
    preference_lr: float = option(
        5e-4, "Peak learning rate of the preference stage (warm-up, then cosine).", gt=0
    )
    contrastive_weight: float = option(
        0.5,
        "Weight of a contrastive batch added to each preference step, so the tower keeps its captions.",
        ge=0,
    )
    eval_captions: int = option(
        432,
        "Held-out captions (evenly spaced) whose toy-model candidates measure pairwise accuracy; 0 skips.",
        ge=0,
        le=_HELD_OUT_CAPTIONS,
    )
    eval_candidates: int = option(4, "Toy-model candidates per held-out caption for the evaluation pairs.")

    def problems(self) -> list[str]:
        """The candidate counts first (a pair needs two), the typed checks' problems, then the
        settings that must fit together."""
        problems = [
            f"{name} must be at least 2 (pairs need two candidates), got {value}"
            for name in ("candidates", "eval_candidates")
            if (value := getattr(self, name)) < 2
        ]
        problems += super().problems() + _multiple_problems(self, {"width": 4})
        if self.renders == 0 and self.captions == 0:
            problems.append("renders and captions are both 0: the contrastive stage has no images")
        if self.preference_steps and not self.captions:
            problems.append("preference_steps needs toy-model pairs: captions must be > 0")
        return problems
