"""Training outputs as models in the store, with their lineage: parent model, dataset version, run."""

from __future__ import annotations

import json
from pathlib import Path

from datastore.records import register_model
from datastore.sql import first_row
from datastore.store import Store
from training.config import RecipeConfig
from training.options import ConfigError
from training.recipes import get_recipe


def _model_id_for(con, path: str) -> int:
    """The id of the model stored at ``path`` (a folder or hub id), registering it as a base model if new."""
    row = first_row(con, "SELECT id FROM models WHERE path = ? ORDER BY id LIMIT 1", [path])
    return row[0] if row else register_model(con, path, path, kind="base")


def _dataset_version_id(folder: Path) -> str | None:
    manifest = folder / "manifest.json"
    return json.loads(manifest.read_text()).get("id") if manifest.is_file() else None


def register_run(
    store: Store,
    recipe: str,
    cfg: RecipeConfig,
    final: Path,
    *,
    round_id: int | None = None,
    job_id: int | None = None,
) -> int:
    """Registers a finished run's weights as a model whose parent is the model it started from.

    The model is named after its run folder; registering the same run again returns the same id.

    Args:
        store: the workbench store.
        recipe: ``dpo``, ``spo`` or ``spm``.
        cfg: the run's config; the recipe's ``parent_field`` names the parent model.
        final: the folder with the final weights (what the recipe's ``main`` returned).
        round_id: the round that trained it, if any.
        job_id: the background job that trained it, if any.

    Returns:
        The new (or existing) model id.

    Raises:
        ConfigError: ``recipe`` is unknown or ``cfg`` is not its config.
    """
    spec = get_recipe(recipe)
    if type(cfg) is not spec.config_class:
        raise ConfigError(f"a {recipe} run needs a {spec.config_class.__name__}, got {type(cfg).__name__}")
    parent_path = getattr(cfg, spec.parent_field)
    dataset = getattr(cfg, "dataset", None)
    with store.write() as con:
        return register_model(
            con,
            f"{recipe}-{Path(cfg.output_dir).name}",
            str(Path(final).resolve()),
            kind=spec.output_kind(cfg),
            parent_id=_model_id_for(con, parent_path),
            round_id=round_id,
            job_id=job_id,
            dataset_version=_dataset_version_id(Path(dataset)) if dataset else None,
            metadata={
                "recipe": recipe,
                "run_dir": str(Path(cfg.output_dir).resolve()),
                "config": cfg.to_dict(),
            },
        )
