"""What one round does: `RoundConfig`, with the generation, curation and recipe options nested as
their own typed configs, and the settings of `workbench demo`.

A round's config is stored with it (`RoundConfig.to_dict`); `RoundConfig.from_dict` also reads
the flat form that the CLI's options and rounds recorded before the nesting use.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from datastore.consensus import Method
from training.options import TypedConfig, option
from training.recipes import get_recipe
from workbench.generation_config import GenerationConfig
from workbench.rounds.errors import RoundError
from workbench.toy import DEFAULT_GUIDANCE, TOY_SCORER_DIR

Feedback = Literal["ai", "human", "both"]
RoundRecipe = Literal["dpo", "spo", "spm-spo"]

ROUND_RECIPES: dict[str, tuple[str, ...]] = {"dpo": ("dpo",), "spo": ("spo",), "spm-spo": ("spm", "spo")}
"""The training recipes (`training.recipes`) each round recipe runs, in order: ``training`` holds
the first one's options and ``spo_training`` the second's."""

ROUND_INPUTS = ("pretrained_model", "dataset", "output_dir", "prompts", "scorer")
"""Recipe options a round sets itself: the parent, the round's dataset, run folder, prompts and scorer."""

DPO_DEFAULTS: dict[str, Any] = {
    "mode": "lora",
    "learning_rate": 1e-3,
    "beta": 5000.0,
    "batch_size": 16,
    "max_steps": 300,
    "warmup_fraction": 0.1,
    "random_flip": False,
    "cache_latents": True,
}
"""DPO settings of a round where its ``training`` options say nothing (measured on the toy model).
No mirroring: captions name positions, and a mirrored winner no longer matches its caption."""

SPO_DEFAULTS: dict[str, Any] = {
    "max_steps": 20,
    "prompts_per_step": 4,
    "train_batch_size": 32,
    "score_scale": 10.0,
    "warmup_steps": 0,
    "max_timestep": 951,
}
"""SPO settings of a round where its options say nothing; score_scale 10 suits scores in [0, 1].
Pools at every step: on the shapes world the first steps (t 951-801) decide colour and shape as
often as any later step (benchmarks/RESULTS.md, "Where the shapes world decides")."""

SPM_DEFAULTS: dict[str, Any] = {
    "reward_model": str(TOY_SCORER_DIR),
    "guidance_scale": 1.0,
    "eval_every": 2000,
}
"""Step-aware model settings of an spm-spo round where its ``training`` options say nothing: it
starts from the shapes world's PickScore and learns on unguided x0s, which the toy UNet keeps far
more of than guided ones (benchmarks/RESULTS.md, "The step-aware model on the shapes world"),
evaluated on its held-out prompts once, after its last step."""

SPM_SPO_DEFAULTS: dict[str, Any] = {
    **SPO_DEFAULTS,
    "score_scale": 1.0,
    "judge_guidance_scale": 1.0,
    "warmup_steps": 4,
    "max_timestep": 750,
    "learning_rate": 1e-3,
    "ema_decay": 0.995,
    "max_steps": 270,
}
"""SPO settings of an spm-spo round's second stage where its ``spo_training`` options say nothing:
the SPM's logit-scale scores of unguided x0s (as it was trained), the official trained range, and
the rate and weight average with which five of seven runs reached 60 % within 15 CPU-minutes on
the shapes world (benchmarks/RESULTS.md, "A weight average holds what the swings give back")."""


def round_generation() -> GenerationConfig:
    """A round's default sampling: the toy model's guidance (the evaluation's, so data is on-policy)."""
    return GenerationConfig(guidance_scale=DEFAULT_GUIDANCE, batch_size=32)


@dataclass
class RoundCuration(TypedConfig):
    """How a round's judgments become its dataset version (see `labeling.curation`)."""

    error = RoundError

    method: Method = option(
        "majority", help="Per-pair label by majority vote or by Dawid-Skene annotator weighting."
    )
    min_agreement: float = option(
        0.0, ge=0.0, le=1.0, help="Leave out pairs whose judgments agree less than this."
    )
    include_ties: bool = option(False, help="Keep pairs whose consensus is a tie.")
    step_judgments: Literal["all", "completion"] = option(
        "all", help="Step judgments that count: all, or only those people made on completion previews."
    )
    saved: str | None = option(
        None,
        help="A saved curation (`workbench curation save`) to use instead of the feedback, min_agreement, "
        "include_ties, step_judgments and consensus settings; restricted to the round's pairs either way.",
    )


FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{name: ("generation", name) for name in ("per_prompt", "pool_k", "pairing", "num_inference_steps")},
    "guidance_scale": ("generation", "guidance_scale"),
    "consensus": ("curation", "method"),
    "min_agreement": ("curation", "min_agreement"),
    "include_ties": ("curation", "include_ties"),
}
"""Flat option names (the CLI's, and those of rounds recorded before the nesting) -> (nested
config, its field). A flat ``curation`` (a saved curation's name) is ``curation.saved``."""


@dataclass
class RoundConfig(TypedConfig):
    """What one round does. Stored with the round, so a round resumes and reproduces from it."""

    error = RoundError

    prompts_file: Path | None = option(
        None,
        help="Prompt set, one per line (or .jsonl with a prompt field); default the shapes world's training captions.",
    )
    num_prompts: int = option(
        32, ge=1, help="Prompts drawn (seeded by seed and round id) from the prompt set each round."
    )
    generation: GenerationConfig = option(
        help="How candidates are drawn and paired; its seed is the round's (see seed).",
        default_factory=round_generation,
    )
    final_pairs: bool = option(True, help="Generate finished candidates and pair them.")
    step_pools: bool = option(False, help="Generate SPO step pools and pair their candidates.")
    seed: int = option(
        0,
        help="Base seed: a round r models away from the base draws prompts, candidates and training noise with seed + r.",
    )
    feedback: Feedback = option(
        "ai", help="Who judges: ai (the scorer, no person), human (the round waits for people) or both."
    )
    scorer: str = option("shapes-oracle", help="AI feedback scorer spec (see reward_models.spec).")
    tie_margin: float = option(
        0.0, ge=0.0, help="AI judgments with a score difference at most this are ties."
    )
    human_judgments_per_pair: int = option(
        1, ge=1, help="Human judgments each pair needs before training (human, both)."
    )
    curation: RoundCuration = option(
        help="How the round's judgments are curated into its dataset version.", default_factory=RoundCuration
    )
    recipe: RoundRecipe = option(
        "dpo",
        help="dpo: Diffusion-DPO on the round's final pairs. spo: SPO online with the scorer. spm-spo: train "
        "the step-aware preference model on the round's judgments, then SPO with it as the step judge.",
    )
    training: dict[str, Any] = option(
        {},
        help="Options of the recipe's config (DPOConfig, SPOConfig; SPMConfig with recipe spm-spo) over the "
        "round's defaults, e.g. learning_rate=2e-4 (VALUE as JSON, else text).",
    )
    spo_training: dict[str, Any] = option(
        {}, help="SPOConfig options of recipe spm-spo's second stage, as for training."
    )
    eval_prompts_file: Path | None = option(
        None, help="Held-out evaluation prompts; default the shapes world's held-out captions."
    )
    eval_prompts: int = option(48, ge=1, help="Evaluation prompts, evenly spaced over the held-out set.")
    eval_seeds: tuple[int, ...] = option((0, 1), help="Seeds every evaluation prompt is drawn with.")
    eval_scorer: str = option("shapes-oracle", help="Scorer spec that decides evaluation wins.")
    eval_steps: int = option(20, ge=1, help="DDIM steps of evaluation images.")
    human_eval_pairs: int = option(
        256,
        ge=0,
        help="At most this many human-judged pairs on held-out prompts score the new model's implicit "
        "preference against its parent's (0: skip).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("per_prompt", "pool_k"):
            if getattr(self.generation, name) < 2:
                raise RoundError(
                    f"{name} must be >= 2 (a pair needs two candidates), got {getattr(self.generation, name)}"
                )
        if self.generation.seed is not None:
            raise RoundError("generation.seed is the round's own (seed + depth): set seed instead")
        if not (self.final_pairs or self.step_pools):
            raise RoundError("a round needs final_pairs or step_pools (or both)")
        if self.recipe == "dpo" and not self.final_pairs:
            raise RoundError("recipe dpo trains on final pairs: set final_pairs")
        if not self.eval_seeds:
            raise RoundError("eval_seeds needs at least one seed")
        for name, recipe in (("training", ROUND_RECIPES[self.recipe][0]), ("spo_training", "spo")):
            config_class = get_recipe(recipe).config_class
            known = {f.name for f in dataclasses.fields(config_class)} - set(ROUND_INPUTS)
            unknown = sorted(getattr(self, name).keys() - known)
            if unknown:
                raise RoundError(
                    f"{name}: {', '.join(unknown)} is not a {config_class.__name__} option a round takes "
                    f"(it sets {', '.join(ROUND_INPUTS)} itself)"
                )

    def pair_kinds(self) -> tuple[str, ...]:
        """The pair kinds the round draws: ``final``, ``step`` or both."""
        return tuple(k for k, on in (("final", self.final_pairs), ("step", self.step_pools)) if on)

    def generation_config(self, seed: int) -> GenerationConfig:
        """The round's sampling with its seed."""
        return dataclasses.replace(self.generation, seed=seed)

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> RoundConfig:
        """The config `to_dict` wrote, or the flat form (`FLAT_NAMES`, ``training`` as KEY=VALUE
        items) of the CLI and of rounds recorded before; unknown keys are an error."""
        if not isinstance(data, dict):
            return super().from_dict(data, source)
        data = dict(data)
        if data.get("recipe") == "spm":  # the name recipe spm-spo had in rounds recorded before it
            data["recipe"] = "spm-spo"
        if not isinstance(data.get("curation", {}), dict | RoundCuration):
            data["curation"] = {"saved": data["curation"]}
        for name in ("training", "spo_training"):
            if isinstance(data.get(name), list | tuple):
                data[name] = parse_overrides(data[name])
        flat = {name: data.pop(name) for name in FLAT_NAMES.keys() & data.keys()}
        if flat:
            nested = {"generation": round_generation().to_dict(), "curation": RoundCuration().to_dict()}
            for group, defaults in nested.items():
                given = data.get(group, {})
                nested[group] = {**defaults, **(given.to_dict() if isinstance(given, TypedConfig) else given)}
            for name, value in flat.items():
                group, field = FLAT_NAMES[name]
                nested[group][field] = value
            data.update(nested)
        return super().from_dict(data, source)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``("beta=5000", "mode=lora")`` -> ``{"beta": 5000, "mode": "lora"}`` (values as JSON, else text).

    Raises:
        RoundError: an item is not KEY=VALUE.
    """
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise RoundError(f"a training option must be KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


DEMO = RoundConfig(num_prompts=96, eval_prompts=64, eval_seeds=(0, 1))
"""The settings of `workbench demo` other than its sizes: oracle feedback on the shapes world, DPO."""


def demo_config(
    *,
    prompts: int = DEMO.num_prompts,
    train_steps: int = DPO_DEFAULTS["max_steps"],
    eval_prompts: int = DEMO.eval_prompts,
    eval_seeds: int = len(DEMO.eval_seeds),
    steps: int = DEMO.generation.num_inference_steps,
    seed: int = DEMO.seed,
) -> RoundConfig:
    """The demo's round config with the given sizes (smaller ones make a quick smoke run)."""
    return dataclasses.replace(
        DEMO,
        num_prompts=prompts,
        seed=seed,
        generation=dataclasses.replace(DEMO.generation, num_inference_steps=steps),
        eval_steps=steps,
        eval_prompts=eval_prompts,
        eval_seeds=tuple(range(eval_seeds)),
        training={"max_steps": train_steps},
    )
