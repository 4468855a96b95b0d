"""Typed recipe configs: one dataclass per recipe, each option documented once in its ``help``.

The options every recipe has are declared once in `RecipeConfig`, the LoRA options in
`LoRAOptions`; a recipe redeclares one only to change its default or help (the bounds stay). The
CLI builds its options from these fields, and a run folder's ``config.json`` is
`TypedConfig.to_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.options import ConfigError, TypedConfig, option

Mode = Literal["lora", "full", "sft"]
MixedPrecision = Literal["no", "fp16", "bf16"]
LearningRateSchedule = Literal["constant", "linear", "cosine"]
SPMTrainable = Literal["modulation", "vision", "all"]
FlipUnit = Literal["pair", "image"]
VAELatents = Literal["mean", "sample"]
SPMStepPairs = Literal["none", "completion", "all"]
SPOStepJudge = Literal["x0", "completion"]


@dataclass(kw_only=True)
class RecipeConfig(TypedConfig):
    """The options every recipe has; also refuses a local model folder whose weights are truncated."""

    _MODEL_FIELDS = ("pretrained_model", "reward_model")

    pretrained_model: str = option(
        help="Diffusers pipeline to start from: a local folder with model_index.json or a hub id "
        "(SD1.5 or SDXL family)."
    )
    output_dir: Path = option(
        help="Run folder for config, metrics, checkpoints and the final weights; rerunning with the "
        "same config resumes from its latest checkpoint."
    )
    learning_rate: float = option(1e-5, help="AdamW learning rate.", gt=0)
    weight_decay: float = option(1e-2, help="AdamW weight decay.", ge=0)
    max_grad_norm: float = option(1.0, help="Gradient clipping norm.", gt=0)
    max_steps: int = option(1000, help="Optimizer steps to train.", ge=1)
    resolution: int = option(512, help="Image side in pixels; a multiple of 8.")
    mixed_precision: MixedPrecision = option("no", help="Autocast precision of forward passes.")
    seed: int = option(0, help="Seed of every random draw of the run.")
    checkpoint_every: int = option(500, help="Optimizer steps between checkpoints.", ge=1)
    keep_checkpoints: int = option(2, help="How many newest checkpoints to keep.", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if not self.pretrained_model:
            raise ConfigError("pretrained_model must be a local folder or a hub id, got an empty string")

    def check(self) -> None:
        """`TypedConfig.check`, then: a local model folder's safetensors weights must be whole."""
        super().check()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self._MODEL_FIELDS and value and Path(value).is_dir():
                _check_weights(f.name, Path(value))


@dataclass(kw_only=True)
class LoRAOptions(TypedConfig):
    """The LoRA adapter options of the recipes that train one."""

    lora_rank: int = option(8, help="LoRA rank.", ge=1)
    lora_alpha: float = option(8.0, help="LoRA alpha; the adapter output is scaled by alpha / rank.", gt=0)
    lora_targets: tuple[str, ...] = option(
        ("to_q", "to_k", "to_v", "to_out.0"), help="UNet attention modules that get LoRA adapters."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lora_targets:
            raise ConfigError("lora_targets must name at least one module, got none")


def _check_weights(name: str, folder: Path) -> None:
    """Raises ConfigError for a safetensors file under a local model folder that is not whole.

    Cheap: reads each file's header and compares the data size it declares with the file's.
    """
    for file in sorted(folder.rglob("*.safetensors")):
        size = file.stat().st_size
        try:
            with file.open("rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len)) if header_len < size else None
            ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
            whole = 8 + header_len + max(ends, default=0) == size
        except (OSError, struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError):
            whole = False
        if not whole:
            raise ConfigError(f"{name}: the weights file {file} is truncated or corrupt; copy or download it again")


@dataclass(kw_only=True)
class DPOConfig(LoRAOptions, RecipeConfig):
    """Diffusion-DPO (Wallace et al. 2024) and its SFT baseline, offline from a dataset snapshot."""

    dataset: Path = option(
        help="Dataset snapshot folder (pairs.parquet + images/); final pairs with a winner are used, ties dropped."
    )
    mode: Mode = option(
        "lora",
        help="lora: DPO on LoRA adapters, reference = the UNet with adapters disabled. full: DPO on "
        "every UNet weight, reference = a frozen copy. sft: LoRA adapters trained on the winners "
        "only with the plain denoising loss (baseline, no reference).",
    )
    lora_rank: int = option(8, help="LoRA rank (lora and sft modes).")
    beta: float = option(
        5000.0,
        help="DPO KL strength in the official code's units, loss = -logsigmoid(-0.5 * beta * "
        "(model error gap - reference error gap)); the paper uses 2000..5000.",
        gt=0,
    )
    learning_rate: float = option(
        1e-5,
        help="Peak AdamW learning rate. The official full fine-tune uses 1e-8 x total batch "
        "(2.048e-5 at 2048 pairs); LoRA tolerates larger rates.",
    )
    warmup_fraction: float = option(
        0.1, help="Share of max_steps spent in linear warm-up from 0; constant afterwards (paper: 0.25).", ge=0, lt=1
    )
    batch_size: int = option(4, help="Pairs per process per micro-step.", ge=1)
    gradient_accumulation_steps: int = option(
        1, help="Micro-steps per optimizer step; pairs per step = batch_size x this x processes.", ge=1
    )
    mixed_precision: MixedPrecision = option(
        "no",
        help="Autocast precision of forward passes; frozen weights are stored in it, trainable ones in fp32.",
    )
    gradient_checkpointing: bool = option(
        False, help="Recompute UNet activations in backward to save memory."
    )
    cache_latents: bool = option(
        True,
        help="Encode every image (and its mirror when random_flip) and every prompt once per snapshot and "
        "reuse them; the text encoders and VAE then leave memory. The cache holds 2 to 8 latents per pair "
        "(mirrors, posterior std for vae_latents=sample): about 0.25 MB per pair for SD1.5 at 512 px, so "
        "turn it off for datasets whose cache would not fit in memory.",
    )
    cache_dir: Path | None = option(
        None, help="Where cached latents and text embeddings live; default <output_dir>/cache."
    )
    resolution: int = option(
        512, help="Training image side in pixels (shorter side resized, then centre crop)."
    )
    random_flip: bool = option(True, help="Mirror training images with probability 0.5 (see flip_unit).")
    flip_unit: FlipUnit = option(
        "pair",
        help="pair: one coin per pair, both images mirrored together, so the two always show the same "
        "view. image: one coin per image, as the official code's per-image transforms do.",
    )
    vae_latents: VAELatents = option(
        "mean",
        help="mean: the VAE posterior's mean, the same latent every time. sample: a fresh draw from the "
        "posterior at every use, as the official code does (the cache then also holds the std).",
    )
    empty_prompt_dropout: float = option(
        0.2,
        help="Probability of training a pair with the empty prompt, which keeps guidance working (paper: 0.2).",
        ge=0,
        lt=1,
    )
    seed: int = option(0, help="Seed of data order, noise, timesteps, dropout and LoRA initialisation.")
    compile_unet: bool = option(
        False,
        help="torch.compile the UNet (and the full mode's reference), for GPUs. On the CPU it did not "
        "pay: 86 CPU-s to compile on the toy model and no faster steps (benchmarks/RESULTS.md).",
    )
    log_every: int = option(
        10,
        help="Optimizer steps between metric writes. Metrics stay on the device in between (no host "
        "sync in the step); every step still gets its own line, and the NaN guard checks them then.",
        ge=1,
    )


@dataclass(kw_only=True)
class SPMConfig(RecipeConfig):
    """The step-aware preference model: a CLIP / PickScore model with timestep-modulated vision layers."""

    pretrained_model: str = option(
        help="Base diffusion pipeline (folder or hub id) whose VAE and UNet turn final pairs into "
        "predicted x0s at random timesteps; the model SPO will later fine-tune."
    )
    reward_model: str = option(
        help="Where the SPM starts: a CLIP or PickScore folder or hub id (gets a fresh, identity "
        "timestep modulation), or a saved SPM folder to continue from."
    )
    dataset: Path = option(
        help="Dataset snapshot folder (pairs.parquet + images/): its final pairs, and step pairs per step_pairs."
    )
    output_dir: Path = option(
        help="Run folder for config, metrics, checkpoints and the final SPM; rerunning with the same config resumes."
    )
    processor: str | None = option(
        None,
        help="CLIP processor folder or hub id when reward_model has none (PickScore_v1: "
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K).",
    )
    trainable: SPMTrainable = option(
        "vision",
        help="modulation: only the timestep modulation. vision: it and the vision tower. all: the text tower too.",
    )
    step_pairs: SPMStepPairs = option(
        "none",
        help="none: learn from final-image preferences only, as SPO's SPM does (each final pair noised "
        "to a random t). completion: also step pairs judged on their completion previews, whose label "
        "is about the finished image. all: also step pairs judged on the predicted x0 itself.",
    )
    learning_rate: float = option(1e-5, help="AdamW learning rate of the CLIP weights.")
    modulation_learning_rate: float = option(
        1e-4, help="AdamW learning rate of the timestep modulation, which starts from zero.", gt=0
    )
    warmup_fraction: float = option(
        0.05, help="Share of max_steps spent in linear warm-up from 0; constant afterwards.", ge=0, lt=1
    )
    batch_size: int = option(8, help="Pairs per process per micro-step.", ge=1)
    gradient_accumulation_steps: int = option(1, help="Micro-steps per optimizer step.", ge=1)
    max_steps: int = option(2000)
    resolution: int = option(512, help="Side in pixels at which final images are encoded by the base VAE.")
    guidance_scale: float = option(
        5.0,
        help="Classifier-free guidance of the base UNet's x0 prediction; match the scale SPO samples with.",
        ge=1,
    )
    timestep_buckets: tuple[int, ...] = option(
        (0, 250, 500, 750, 1000), help="Edges of the timestep buckets that accuracy is reported for."
    )
    eval_fraction: float = option(
        0.1, help="Share of prompts held out for evaluation (0: none); the split is by prompt hash.", ge=0, lt=1
    )
    eval_every: int = option(200, help="Optimizer steps between evaluations (also after the last step).", ge=1)
    cache_latents: bool = option(
        True,
        help="Encode each image file and prompt once, the first time a batch holds it, and keep the latents and "
        "embeddings in memory for the run: about 64 KB per image for SD1.5 at 512 px, so turn it off for "
        "snapshots whose latents would not fit.",
    )
    seed: int = option(0, help="Seed of data order, timesteps and noise.")

    def __post_init__(self) -> None:
        super().__post_init__()
        edges = self.timestep_buckets
        if len(edges) < 2 or edges[0] != 0 or any(a >= b for a, b in zip(edges, edges[1:], strict=False)):
            raise ConfigError(f"timestep_buckets must rise strictly from 0, got {list(edges)}")
        if not self.reward_model:
            raise ConfigError("reward_model must be a local folder or a hub id, got an empty string")


@dataclass(kw_only=True)
class SPOConfig(LoRAOptions, RecipeConfig):
    """SPO: online step-level preference optimization of a LoRA with a step scorer."""

    output_dir: Path = option(
        help="Run folder for config, metrics, checkpoints and the final LoRA; rerunning with the same config resumes."
    )
    prompts: tuple[str, ...] = option((), help="Training prompts; or give prompts_file.")
    prompts_file: Path | None = option(
        None, help="Text file with one training prompt per line; or give prompts."
    )
    scorer: str = option(
        "",
        help="Step scorer when none is passed in-process (see reward_models.spec): shapes-oracle, clip:PATH, "
        "pickscore:PATH, aesthetic:CLIP_PATH,HEAD_FILE or spm:PATH. Step-aware scorers get the candidate's timestep.",
    )
    num_candidates: int = option(
        4, help="Candidates k drawn from each x_t (paper: 4 for SD1.5, 2 for SDXL).", ge=2
    )
    num_inference_steps: int = option(20, help="DDIM steps of each sampled chain.", ge=1)
    eta: float = option(1.0, help="DDIM eta; > 0, the transitions must be stochastic to form pools.", gt=0)
    guidance_scale: float = option(
        5.0, help="Classifier-free guidance scale while sampling and in the log-densities.", ge=1
    )
    warmup_steps: int = option(
        4, help="First denoising steps of each chain run without pools or training (paper: 4 of 20)."
    )
    min_timestep: int = option(
        0, help="Pools are drawn only at steps with t in [min_timestep, max_timestep]."
    )
    max_timestep: int = option(
        750, help="Upper end of the trained timesteps (paper: about 750; 950 was much worse)."
    )
    step_judge: SPOStepJudge = option(
        "x0",
        help="What the scorer judges of a candidate: x0 = its decoded predicted x0 at its timestep (the paper, "
        "for a step-aware scorer such as the SPM); completion = the finished image its deterministic (eta 0) "
        "completion reaches (any final-image scorer; costs the remaining denoising steps per candidate).",
    )
    judge_guidance_scale: float | None = option(
        None,
        help="Guidance of the predicted x0 that step_judge x0 judges, taken from the same UNet call as the "
        "chain's step (no extra cost); None: guidance_scale, as the paper. Match the SPM's guidance_scale.",
        ge=1,
    )
    threshold: float = option(
        0.3,
        help="Keep a pool's best-worst pair only when softmax(best, worst) differs by more than this (SDXL: 0.4).",
        ge=0,
        lt=1,
    )
    score_scale: float = option(
        1.0,
        help="Scores are multiplied by this before the softmax. The threshold suits logit-scale scores "
        "(PickScore, CLIP x 100, the SPM); scorers in [0, 1] such as the shapes oracle need about 10.",
        gt=0,
    )
    beta: float = option(10.0, help="Inverse temperature of the step loss (paper: 10).", gt=0)
    clip_range: float = option(
        0.1, help="Half-width of the likelihood-ratio trust region (paper: 0.1).", gt=0, lt=1
    )
    lora_rank: int = option(4, help="LoRA rank (paper: 4 for SD1.5, 64 for SDXL).")
    lora_alpha: float = option(4.0)
    learning_rate: float = option(6e-5, help="AdamW learning rate (paper: 6e-5 SD1.5, 1e-5 SDXL, constant).")
    lr_schedule: LearningRateSchedule = option(
        "constant",
        help="Learning rate over the rounds: constant (the paper); linear or cosine: from learning_rate "
        "down to 0 at max_steps (diffusers' schedule of that name, one step per round).",
    )
    lr_warmup_rounds: int = option(
        0,
        help="Rounds over which the learning rate first rises linearly from 0 (round r at r / lr_warmup_rounds) "
        "before lr_schedule takes over; 0: none (the paper).",
        ge=0,
    )
    weight_decay: float = option(1e-4)
    prompts_per_step: int = option(
        4,
        help="Chains sampled per process for each optimizer step; more chains share each UNet and VAE call "
        "(on the toy model 4 chains keep about 1.1x the pairs per CPU-second of 2).",
        ge=1,
    )
    pairs_per_update: int | None = option(
        10,
        help="Kept pairs per optimizer step per process (paper: 10): a round's kept pairs are shuffled and "
        "split into that many updates; None: one update per round on all its pairs.",
        ge=1,
    )
    train_batch_size: int = option(
        32,
        help="Pairs per forward/backward pass; only memory depends on it, every kept pair of a step is used.",
        ge=1,
    )
    ema_decay: float | None = option(
        None,
        help="Keep an exponential moving average of the LoRA weights, updated after every optimizer step "
        "with decay min(ema_decay, (1 + n) / (10 + n)) at update n; the average is what the final LoRA and "
        "each checkpoint's average/ folder hold. None: the last weights (the paper).",
        gt=0,
        lt=1,
    )
    max_steps: int = option(1000, help="Sampling rounds to run (each makes the updates its kept pairs give).")
    resolution: int = option(512, help="Side of the sampled images in pixels (1024 for SDXL).")
    mixed_precision: MixedPrecision = option(
        "no", help="Autocast precision of forward passes; frozen weights are stored in it, the LoRA in fp32."
    )
    seed: int = option(0, help="Seed of prompt order, sampling noise, resampling and LoRA initialisation.")
    checkpoint_every: int = option(100)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.warmup_steps < self.num_inference_steps:
            raise ConfigError(
                f"warmup_steps must be in [0, num_inference_steps = {self.num_inference_steps}), got {self.warmup_steps}"
            )
        if not 0 <= self.min_timestep <= self.max_timestep:
            raise ConfigError(
                f"need 0 <= min_timestep <= max_timestep, got {self.min_timestep} and {self.max_timestep}"
            )
        if bool(self.prompts) == (self.prompts_file is not None):
            raise ConfigError("give exactly one of prompts and prompts_file")

    def prompt_list(self) -> list[str]:
        """The training prompts, from `prompts` or from the non-empty lines of `prompts_file`."""
        if self.prompts_file is None:
            return list(self.prompts)
        if not self.prompts_file.is_file():
            raise ConfigError(f"prompts_file {self.prompts_file} does not exist")
        prompts = [line.strip() for line in self.prompts_file.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"prompts_file {self.prompts_file} holds no prompt")
        return prompts
