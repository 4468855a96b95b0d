"""Run folders shared by every recipe: resolved config, metrics, checkpoints, resume, NaN guard.

A run folder looks like::

    config.json          the resolved config the run was started with
    metrics.jsonl        one JSON object per optimizer step ({"step": 3, "loss": ..., ...})
    checkpoints/
        step-00000500/   accelerate state (trainable weights, optimizer, LR scheduler, RNG
                         states, registered objects) + train_state.json (step, data position)

    final/               the final weights, written whole when the run ends

Typical use inside a recipe, on every process::

    run = Run.start(cfg.output_dir, cfg.to_dict(), accelerator)
    train_state = run.resume()          # None on a fresh run
    ...
    check_finite(step, loss=loss_value)
    run.log(step, {"loss": loss_value, "lr": lr})
    if step % cfg.checkpoint_every == 0:
        run.save_checkpoint(step, {"micro_step": micro_step})
    return run.save_final(lambda folder: model.save_pretrained(folder))

and anywhere else, to look at a run (no folder is created)::

    run = Run.open(path)
    run.config(), run.metrics(), run.final

Checkpoints and the final folder are written to a hidden temporary folder and renamed into place, so a run killed
while saving keeps its previous checkpoint; older checkpoints are removed the same way.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datastore.atomic import remove_folder, replace_folder, write_json, write_text
from training.errors import TrainingError

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINT_PREFIX = "step-"
TRAIN_STATE = "train_state.json"
FINAL = "final"


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


class Run:
    """One run folder: written by every process of a (possibly distributed) training job, read by
    anyone (jobs, pages, the registry, rounds).

    Only the main process writes config, metrics and folder renames; every process takes part in
    saving and loading checkpoints because each one owns its RNG state.

    Attributes:
        path: The run folder.
        accelerator: The job's accelerator (None for a run opened to be read); its prepared models,
            optimizers and schedulers and its registered objects are what checkpoints hold.
    """

    def __init__(self, path: Path, accelerator: Accelerator | None = None):
        self.path = path
        self.accelerator = accelerator
        self.checkpoints = path / "checkpoints"
        self.metrics_file = path / "metrics.jsonl"
        self.config_file = path / "config.json"
        if accelerator is not None:
            accelerator.register_save_state_pre_hook(self._keep_trainable_weights)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """The run folder at ``path``, to read; nothing is created or written."""
        return cls(Path(path))

    @classmethod
    def start(cls, path: str | Path, config: dict[str, Any], accelerator: Accelerator | None = None) -> Run:
        """Creates the run folder with its config, or reopens it when the config is the same.

        Args:
            path: Run folder; created if missing.
            config: Resolved config, JSON-serialisable; written to ``config.json``.
            accelerator: The job's accelerator; None to prepare the folder from outside the job
                (a launcher), as its only process.

        Returns:
            The run.

        Raises:
            RunError: The folder holds a run with a different config.
        """
        run = cls(Path(path), accelerator)
        if run.config_file.exists():
            run.check_config(config)
        elif accelerator is None or accelerator.is_main_process:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
            write_json(run.config_file, config)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        return run

    def check_config(self, config: dict[str, Any]) -> None:
        """Raises RunError naming every key where ``config`` differs from the run's ``config.json``."""
        previous = self.config()
        changed = sorted(key for key in previous.keys() | config.keys() if previous.get(key) != config.get(key))
        if changed:
            details = "; ".join(f"{key}: {previous.get(key)!r} -> {config.get(key)!r}" for key in changed)
            raise RunError(
                f"Run folder {self.path} was started with another config (differs in {', '.join(changed)}): "
                f"{details}. Use a new output folder, or the same config to resume."
            )

    def config(self) -> dict[str, Any]:
        """The config the run was started with (``config.json``).

        Raises:
            RunError: The folder has no readable ``config.json``.
        """
        try:
            return json.loads(self.config_file.read_text())
        except (OSError, ValueError) as e:
            raise RunError(f"{self.path} is not a run folder with a readable config.json: {e}") from e

    def metrics(self) -> list[dict[str, float]]:
        """Every logged step's metrics, oldest first; [] before the first step.

        A last line still being written (no newline yet) is left out.
        """
        if not self.metrics_file.exists():
            return []
        complete = self.metrics_file.read_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line]

    @property
    def final(self) -> Path | None:
        """The folder with the final weights, None until the run has written it."""
        folder = self.path / FINAL
        return folder if folder.is_dir() else None

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

    def latest_checkpoint(self) -> Path | None:
        """Returns the newest complete checkpoint folder, or None when there is none."""
        if not self.checkpoints.exists():
            return None
        found = sorted(p for p in self.checkpoints.iterdir() if p.name.startswith(CHECKPOINT_PREFIX))
        return found[-1] if found else None

    def save_checkpoint(
        self,
        step: int,
        train_state: dict[str, Any],
        keep: int = 2,
        write: Callable[[Path], None] | None = None,
    ) -> Path:
        """Saves the accelerator state and ``train_state`` as checkpoint ``step``, atomically.

        Only trainable parameters of the prepared models are written (for LoRA, the adapters):
        frozen weights come back from the pretrained model on resume. Call on every process.

        Args:
            step: Optimizer steps done.
            train_state: JSON-serialisable recipe state to restore, e.g. the data position.
            keep: How many newest checkpoints to keep.
            write: Writes more files into the checkpoint folder it is given (main process only),
                e.g. a ready-to-load LoRA.

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
            write_json(tmp / TRAIN_STATE, {"step": step, **train_state})
            if write is not None:
                write(tmp)
            replace_folder(tmp, final)
            older = sorted(p for p in self.checkpoints.iterdir() if p.name.startswith(CHECKPOINT_PREFIX))
            for old in older[: max(len(older) - keep, 0)]:
                remove_folder(old)
        accelerator.wait_for_everyone()
        return final

    def save_final(self, write: Callable[[Path], None]) -> Path:
        """On the main process, ``write`` the final weights into a temporary folder that then replaces
        ``final/``: a reader or a kill never sees a half-written result. Call on every process.

        Returns:
            The final folder.
        """
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            replace_folder(write, self.path / FINAL)
        self.accelerator.wait_for_everyone()
        return self.path / FINAL

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
            kept = [m for m in self.metrics() if m["step"] <= train_state["step"]]
            write_text(self.metrics_file, "".join(json.dumps(m) + "\n" for m in kept))
        self.accelerator.wait_for_everyone()
        return train_state

    @staticmethod
    def _keep_trainable_weights(models: list, weights: list[dict], output_dir: str) -> None:
        # FSDP and DeepSpeed save their models themselves and pass no weights here.
        for i, state in enumerate(weights):
            trainable = {name for name, p in models[i].named_parameters() if p.requires_grad}
            weights[i] = {name: tensor for name, tensor in state.items() if name in trainable}
