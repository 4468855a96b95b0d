"""The training recipes by name: their config class, module, and what their output is.

Every place that dispatches on a recipe (jobs, the CLI, the Train page, the registry, rounds)
reads this table; a recipe module is imported only when it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from training.config import DPOConfig, RecipeConfig, SPMConfig, SPOConfig
from training.options import ConfigError


@dataclass(frozen=True)
class Recipe:
    """One training recipe.

    Attributes:
        name: Its short name (``dpo``), used in job kinds, run folder names and the CLI.
        title: Its name for people (``DPO``).
        config_class: Its config dataclass.
        module: The module with ``main(cfg) -> Path``, also run as
            ``accelerate launch -m <module> --config run.json``.
        model_kind: What the registry records for its output (``lora``, ``scorer``); a DPO run in
            mode ``full`` writes a whole pipeline and is recorded as ``full``.
        parent_field: The config field naming the model the run starts from.
    """

    name: str
    title: str
    config_class: type[RecipeConfig]
    module: str
    model_kind: str
    parent_field: str

    def output_kind(self, cfg: RecipeConfig) -> str:
        """What a run of ``cfg`` writes: ``full`` for a full fine-tune (a whole pipeline), else the
        recipe's `model_kind`."""
        return "full" if getattr(cfg, "mode", None) == "full" else self.model_kind

    def run(self, cfg: RecipeConfig) -> Path:
        """Runs the recipe in this process and returns the folder with its final weights."""
        return importlib.import_module(self.module).main(cfg)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("dpo", "DPO", DPOConfig, "training.dpo", "lora", "pretrained_model"),
        Recipe("spo", "SPO", SPOConfig, "training.spo", "lora", "pretrained_model"),
        Recipe("spm", "SPM", SPMConfig, "training.spm", "scorer", "reward_model"),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ConfigError: No recipe has this name; the message lists the known ones.
    """
    if name not in RECIPES:
        raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    return RECIPES[name]


def recipe_of(cfg: RecipeConfig) -> Recipe:
    """The recipe whose config class ``cfg`` is.

    Raises:
        ConfigError: ``cfg`` is no recipe's config.
    """
    for recipe in RECIPES.values():
        if type(cfg) is recipe.config_class:
            return recipe
    raise ConfigError(f"{type(cfg).__name__} is not the config of a recipe ({', '.join(RECIPES)})")
