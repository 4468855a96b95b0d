"""The recipe table: names, config classes, modules."""

from __future__ import annotations

import pytest

from training.config import DPOConfig, SPMConfig
from training.options import ConfigError
from training.recipes import RECIPES, get_recipe, recipe_of


def test_each_recipe_is_found_by_name_and_by_its_config():
    assert list(RECIPES) == ["dpo", "spo", "spm"]
    for name, recipe in RECIPES.items():
        assert get_recipe(name) is recipe and recipe.module == f"training.{name}"
    cfg = DPOConfig(dataset="/d", pretrained_model="/m", output_dir="/r")
    assert recipe_of(cfg).name == "dpo"
    assert get_recipe("spm").config_class is SPMConfig and get_recipe("spm").parent_field == "reward_model"


def test_an_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="recipe must be one of dpo, spo, spm, got 'ppo'"):
        get_recipe("ppo")
