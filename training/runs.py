"""Run folders shared by every recipe: resolved config, metrics, checkpoints, resume, NaN guard.

A run folder looks like::

    config.json          the resolved config the run was started with
    metrics.jsonl        one JSON object per optimizer step ({"step": 3, "loss": ..., ...})
    checkpoints/
        step-00000500/   accelerate state (trainable weights, optimizer, LR scheduler, RNG
                         states, registered objects) + train_state.json (step, data position)

Typical use inside a recipe, on every process::

    run = Run.open(cfg.output_dir, cfg.to_dict(), accelerator)
    train_state = run.resume()          # None on a fresh run
    ...
    check_finite(step, loss=loss_value)
    run.log(step, {"loss": loss_value, "lr": lr})
    if step % cfg.checkpoint_every == 0:
        run.save_checkpoint(step, {"micro_step": micro_step})

Checkpoints are written to a hidden temporary folder and renamed into place, so a run killed
while saving keeps its previous checkpoint; older checkpoints are removed the same way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from training.errors import TrainingError

CHECKPOINT_PREFIX = "step-"
TRAIN_STATE = "train_state.json"


class RunError(TrainingError, RuntimeError):
    """A run folder cannot be used as asked (config mismatch, broken checkpoint)."""


class NonFiniteError(RunError):
    """A training value became NaN or infinite; the run stops instead of corrupting weights."""


def check_finite(step: int, **values: float) -> None:
    """Stops the run when any value is NaN or infinite.

    Call it with values reduced across processes, so that every process raises together.

    Args:
        step: Optimizer step being computed (1-based), named in the error.
        **values: Scalars to check, e.g. ``loss=0.69``.

    Raises:
        NonFiniteError: Naming the step and every non-finite value.
    """
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if bad:
        listed = ", ".join(f"{name} = {value}" for name, value in bad.items())
        raise NonFiniteError(
            f"Non-finite training value at step {step}: {listed}. Lower the learning rate, prefer bf16 "
            "over fp16, or check the data; the run folder keeps its last good checkpoint."
        )


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(folder: Path) -> None:
    """Deletes a folder so that no half-deleted copy is ever seen under its name."""
    trash = folder.with_name(f".trash-{folder.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash)


class Run:
    """One run folder, used by every process of a (possibly distributed) training job.

    Only the main process writes config, metrics and folder renames; every process takes part in
    saving and loading checkpoints because each one owns its RNG state.

    Attributes:
        path: The run folder.
        accelerator: The job's accelerator; its prepared models, optimizers and schedulers and its
            registered objects are what checkpoints hold.
    """

    def __init__(self, path: Path, accelerator: Accelerator):
        self.path = path
        self.accelerator = accelerator
        self.checkpoints = path / "checkpoints"
        self.metrics_file = path / "metrics.jsonl"
        accelerator.register_save_state_pre_hook(self._keep_trainable_weights)

    @classmethod
    def open(cls, path: str | Path, config: dict[str, Any], accelerator: Accelerator) -> Run:
        """Creates the run folder with its config, or reopens it when the config is the same.

        Args:
            path: Run folder; created if missing.
            config: Resolved config, JSON-serialisable; written to ``config.json``.
            accelerator: The job's accelerator.

        Returns:
            The run.

        Raises:
            RunError: The folder holds a run with a different config.
        """
        run = cls(Path(path), accelerator)
        config_file = run.path / "config.json"
        if config_file.exists():
            previous = json.loads(config_file.read_text())
            changed = sorted(
                key for key in previous.keys() | config.keys() if previous.get(key) != config.get(key)
            )
            if changed:
                details = "; ".join(f"{key}: {previous.get(key)!r} -> {config.get(key)!r}" for key in changed)
                raise RunError(
                    f"Run folder {run.path} was started with another config ({details}). "
                    "Use a new output folder, or the same config to resume."
                )
        elif accelerator.is_main_process:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
            write_json_atomic(config_file, config)
        accelerator.wait_for_everyone()
        return run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Appends one line ``{"step": step, **metrics}`` to ``metrics.jsonl`` and flushes it.

        Args:
            step: Optimizer step (1-based).
            metrics: Scalar metrics, already reduced across processes.
        """
        if not self.accelerator.is_main_process:
            return
        with self.metrics_file.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, float]]:
        """Returns every logged step's metrics, oldest first."""
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line]

    def latest_checkpoint(self) -> Path | None:
        """Returns the newest complete checkpoint folder, or None when there is none."""
        if not self.checkpoints.exists():
            return None
        found = sorted(p for p in self.checkpoints.iterdir() if p.name.startswith(CHECKPOINT_PREFIX))
        return found[-1] if found else None

    def save_checkpoint(self, step: int, train_state: dict[str, Any], keep: int = 2) -> Path:
        """Saves the accelerator state and ``train_state`` as checkpoint ``step``, atomically.

        Only trainable parameters of the prepared models are written (for LoRA, the adapters):
        frozen weights come back from the pretrained model on resume. Call on every process.

        Args:
            step: Optimizer steps done.
            train_state: JSON-serialisable recipe state to restore, e.g. the data position.
            keep: How many newest checkpoints to keep.

        Returns:
            The checkpoint folder.
        """
        accelerator = self.accelerator
        final = self.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"
        tmp = self.checkpoints / f".tmp-{final.name}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(tmp / TRAIN_STATE, {"step": step, **train_state})
            _fsync_tree(tmp)
            if final.exists():
                _remove_tree(final)
            os.replace(tmp, final)
            older = sorted(p for p in self.checkpoints.iterdir() if p.name.startswith(CHECKPOINT_PREFIX))
            for old in older[: max(len(older) - keep, 0)]:
                _remove_tree(old)
        accelerator.wait_for_everyone()
        return final

    def resume(self) -> dict[str, Any] | None:
        """Loads the latest checkpoint into the accelerator's objects, if there is one.

        Metrics logged after that checkpoint (by a run that died later) are dropped, so that
        ``metrics.jsonl`` again has one line per step. Call on every process, after
        ``accelerator.prepare`` and ``register_for_checkpointing``.

        Returns:
            The ``train_state`` given to `save_checkpoint` plus ``"step"``, or None on a fresh run.
        """
        checkpoint = self.latest_checkpoint()
        if checkpoint is None:
            return None
        # Checkpoints hold only trainable weights; the frozen rest is already loaded.
        self.accelerator.load_state(str(checkpoint), strict=False)
        train_state = json.loads((checkpoint / TRAIN_STATE).read_text())
        if self.accelerator.is_main_process:
            kept = [m for m in self.read_metrics() if m["step"] <= train_state["step"]]
            tmp = self.metrics_file.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
            os.replace(tmp, self.metrics_file)
        self.accelerator.wait_for_everyone()
        return train_state

    @staticmethod
    def _keep_trainable_weights(models: list, weights: list[dict], output_dir: str) -> None:
        # FSDP and DeepSpeed save their models themselves and pass no weights here.
        for i, state in enumerate(weights):
            trainable = {name for name, p in models[i].named_parameters() if p.requires_grad}
            weights[i] = {name: tensor for name, tensor in state.items() if name in trainable}


DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Weight dtype of frozen modules per ``mixed_precision`` setting (the recipes' configs)."""


def replace_folder(folder: Path, write: Callable[[Path], None], accelerator: Accelerator) -> Path:
    """On the main process, ``write`` a temporary folder and rename it over ``folder``: a reader or
    a kill never sees a half-written result. Every process waits for it."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    accelerator.wait_for_everyone()
    return folder
