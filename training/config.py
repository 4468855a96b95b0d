"""Typed recipe configs: one dataclass per recipe, each option documented once in its ``help``.

The CLI builds its options from these fields, and a run folder's ``config.json`` is
`DPOConfig.to_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.errors import TrainingError

Mode = Literal["lora", "full", "sft"]
MixedPrecision = Literal["no", "fp16", "bf16"]


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with its documentation in ``metadata["help"]``."""
    if isinstance(default, list | tuple | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


class ConfigError(TrainingError, ValueError):
    """A config value is out of range or of the wrong kind."""


@dataclass
class DPOConfig:
    """Diffusion-DPO (Wallace et al. 2024) and its SFT baseline, offline from a dataset snapshot."""

    pretrained_model: str = option(
        help="Diffusers pipeline to start from: a local folder with model_index.json or a hub id "
        "(SD1.5 or SDXL family)."
    )
    dataset: Path = option(
        help="Dataset snapshot folder (pairs.parquet + images/); final pairs with a winner are used, ties dropped."
    )
    output_dir: Path = option(
        help="Run folder for config, metrics, checkpoints and the final weights; rerunning with the "
        "same config resumes from its latest checkpoint."
    )
    mode: Mode = option(
        "lora",
        help="lora: DPO on LoRA adapters, reference = the UNet with adapters disabled. full: DPO on "
        "every UNet weight, reference = a frozen copy. sft: LoRA adapters trained on the winners "
        "only with the plain denoising loss (baseline, no reference).",
    )
    lora_rank: int = option(8, help="LoRA rank (lora and sft modes).")
    lora_alpha: float = option(8.0, help="LoRA alpha; the adapter output is scaled by alpha / rank.")
    lora_targets: tuple[str, ...] = option(
        ("to_q", "to_k", "to_v", "to_out.0"), help="UNet attention modules that get LoRA adapters."
    )
    beta: float = option(
        5000.0,
        help="DPO KL strength in the official code's units, loss = -logsigmoid(-0.5 * beta * "
        "(model error gap - reference error gap)); the paper uses 2000..5000.",
    )
    learning_rate: float = option(
        1e-5,
        help="Peak AdamW learning rate. The official full fine-tune uses 1e-8 x total batch "
        "(2.048e-5 at 2048 pairs); LoRA tolerates larger rates.",
    )
    warmup_fraction: float = option(
        0.1, help="Share of max_steps spent in linear warm-up from 0; constant afterwards (paper: 0.25)."
    )
    weight_decay: float = option(1e-2, help="AdamW weight decay.")
    max_grad_norm: float = option(1.0, help="Gradient clipping norm.")
    batch_size: int = option(4, help="Pairs per process per micro-step.")
    gradient_accumulation_steps: int = option(
        1, help="Micro-steps per optimizer step; pairs per step = batch_size x this x processes."
    )
    max_steps: int = option(1000, help="Optimizer steps to train.")
    mixed_precision: MixedPrecision = option(
        "no",
        help="Autocast precision of forward passes; frozen weights are stored in it, trainable ones in fp32.",
    )
    gradient_checkpointing: bool = option(
        False, help="Recompute UNet activations in backward to save memory."
    )
    cache_latents: bool = option(
        False,
        help="Encode every image (and its mirror when random_flip) and every prompt once per snapshot and "
        "reuse them; the text encoders and VAE then leave memory.",
    )
    cache_dir: Path | None = option(
        None, help="Where cached latents and text embeddings live; default <output_dir>/cache."
    )
    resolution: int = option(
        512, help="Training image side in pixels (shorter side resized, then centre crop)."
    )
    random_flip: bool = option(True, help="Mirror each pair (both images together) with probability 0.5.")
    empty_prompt_dropout: float = option(
        0.2,
        help="Probability of training a pair with the empty prompt, which keeps guidance working (paper: 0.2).",
    )
    seed: int = option(0, help="Seed of data order, noise, timesteps, dropout and LoRA initialisation.")
    checkpoint_every: int = option(500, help="Optimizer steps between checkpoints.")
    keep_checkpoints: int = option(2, help="How many newest checkpoints to keep.")

    def __post_init__(self) -> None:
        self.dataset = Path(self.dataset)
        self.output_dir = Path(self.output_dir)
        self.cache_dir = None if self.cache_dir is None else Path(self.cache_dir)
        self.lora_targets = tuple(self.lora_targets)
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(
                    f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}"
                )
        positive = {
            "beta": self.beta,
            "learning_rate": self.learning_rate,
            "lora_alpha": self.lora_alpha,
            "max_grad_norm": self.max_grad_norm,
        }
        at_least_one = {
            "lora_rank": self.lora_rank,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_steps": self.max_steps,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        for name, value in at_least_one.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.empty_prompt_dropout < 1:
            raise ConfigError(f"empty_prompt_dropout must be in [0, 1), got {self.empty_prompt_dropout}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if not self.lora_targets:
            raise ConfigError("lora_targets must name at least one module, got none")
        if not self.pretrained_model:
            raise ConfigError("pretrained_model must be a local folder or a hub id, got an empty string")

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as JSON-ready values (paths as strings, tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
            )
        return out

    @classmethod
    def from_json(cls, path: str | Path) -> DPOConfig:
        """Reads a config written by `to_dict` (or by hand); unknown keys are an error."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(data.keys() - known)
        if unknown:
            raise ConfigError(f"unknown DPOConfig options in {path}: {', '.join(unknown)}")
        return cls(**data)
