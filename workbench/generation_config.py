"""What `workbench generate` is asked for: `GenerationConfig` and the prompts file.

Free of torch and diffusers, so that the CLI builds its options cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.options import TypedConfig, option
from workbench.errors import GenerationError

PairingScheme = Literal["all", "adjacent", "random"]
Previews = Literal["none", "completion"]


@dataclass
class GenerationConfig(TypedConfig):
    """How candidates are sampled and paired. Defaults follow SPO's SD1.5 setup where it has one."""

    error = GenerationError

    per_prompt: int = option(
        4, help="Finished candidates per prompt for final pairs (0: none, else at least 2)."
    )
    num_inference_steps: int = option(20, help="DDIM steps of every chain (SPO: 20).", ge=1)
    guidance_scale: float = option(
        5.0,
        help="Classifier-free guidance scale; 1 evaluates the prompt alone, without guidance (SPO: 5.0).",
        ge=0,
    )
    eta: float = option(
        1.0,
        help="DDIM noise: 0 is deterministic DDIM, 1 has DDPM's variance; step pools need > 0 (SPO: 1.0).",
        ge=0,
        le=1,
    )
    height: int | None = option(
        None, help="Image height in pixels; default the pipeline's native size.", ge=8
    )
    width: int | None = option(None, help="Image width in pixels; default the pipeline's native size.", ge=8)
    seed: int | None = option(
        None,
        help="Base seed; each image's (or chain's) seed derives from it, the prompt and the candidate "
        "index, and is recorded. None draws a fresh base seed.",
    )
    batch_size: int = option(8, help="Images (or pool candidates) denoised together, across prompts.", ge=1)
    pairing: PairingScheme = option(
        "all",
        help="Which candidates of a prompt or pool become pairs: all = every two; adjacent = (0, 1), "
        "(1, 2), ...; random = a random matching, each candidate in one pair.",
    )
    pool_k: int = option(
        4, help="Candidates per step pool (0: none, else at least 2; SPO: 4 for SD1.5, 2 for SDXL)."
    )
    pool_steps: tuple[int, ...] | None = option(
        None,
        help="Chain steps that get a pool, in 1..num_inference_steps: step s holds k candidates of the "
        "state after s steps. Default: 4 evenly spaced steps ending at the last (5, 10, 15, 20 of 20).",
    )
    previews: Previews = option(
        "none",
        help="completion: also store, for every pool candidate, the finished image its chain reaches "
        "when completed with deterministic DDIM (eta 0): what people judge a step pair by.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_steps is not None:
            self.pool_steps = tuple(sorted(set(self.pool_steps)))
        for name, value in {"per_prompt": self.per_prompt, "pool_k": self.pool_k}.items():
            if value < 0 or value == 1:
                raise GenerationError(f"{name} must be 0 or >= 2 (a pair needs two candidates), got {value}")
        steps = self.steps_with_pools()
        if not steps or steps[0] < 1 or steps[-1] > self.num_inference_steps:
            raise GenerationError(
                f"pool_steps must lie in 1..{self.num_inference_steps} (num_inference_steps), got {list(steps)}"
            )

    def steps_with_pools(self) -> tuple[int, ...]:
        """The chain steps that get a pool: `pool_steps`, or its documented default."""
        if self.pool_steps is not None:
            return self.pool_steps
        n = self.num_inference_steps
        return tuple(sorted({max(1, round(n * q / 4)) for q in (1, 2, 3, 4)}))


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: JSON Lines with a ``"prompt"`` field (``.jsonl``), else one prompt per line.

    Blank lines are skipped.

    Raises:
        GenerationError: the file cannot be read, a JSON line is malformed or has no prompt, or
            there is no prompt at all.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GenerationError(f"cannot read the prompts file {path}: {e}") from e
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(line.strip())
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenerationError(f"{path}, line {number}: not valid JSON ({e})") from e
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("prompt"), str)
            or not record["prompt"].strip()
        ):
            raise GenerationError(
                f'{path}, line {number}: expected an object with a non-empty "prompt" string'
            )
        prompts.append(record["prompt"].strip())
    if not prompts:
        raise GenerationError(f"the prompts file {path} holds no prompt")
    return prompts
