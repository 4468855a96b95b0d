"""Run folders: config, metrics, atomic checkpoints, resume and the NaN guard, on a tiny linear model."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.optim.lr_scheduler import LambdaLR

from training.runs import NonFiniteError, Run, RunError, check_finite


def make_job(seed: int = 0):
    """A prepared linear model, AdamW and a registered LR scheduler (halving every step).

    The seed changes only the trainable weight; the frozen bias plays the pretrained weights.
    """
    torch.manual_seed(seed)
    accelerator = Accelerator()
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.bias, 0.5)
    model.bias.requires_grad_(False)  # frozen: not part of checkpoints
    optimizer = torch.optim.AdamW([model.weight], lr=0.1)
    scheduler = LambdaLR(optimizer, lambda step: 0.5**step)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return accelerator, model, optimizer, scheduler


def train_step(model, optimizer, scheduler) -> None:
    model(torch.randn(4, 3)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


def test_config_is_written_and_a_different_config_is_refused(tmp_path):
    accelerator = make_job()[0]
    run = Run.start(tmp_path / "run", {"beta": 5000, "lr": 1e-5}, accelerator)
    assert json.loads((run.path / "config.json").read_text()) == {"beta": 5000, "lr": 1e-5}
    Run.start(tmp_path / "run", {"beta": 5000, "lr": 1e-5}, accelerator)
    with pytest.raises(RunError, match=r"beta: 5000 -> 2000"):
        Run.start(tmp_path / "run", {"beta": 2000, "lr": 1e-5}, accelerator)


def test_metrics_are_one_flushed_line_per_step(tmp_path):
    run = Run.start(tmp_path, {}, make_job()[0])
    run.log(1, {"loss": 0.7})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.7}\n'
    run.log(2, {"loss": 0.6})
    assert [m["step"] for m in run.metrics()] == [1, 2]


def test_resume_restores_weights_optimizer_scheduler_rng_and_train_state(tmp_path):
    accelerator, model, optimizer, scheduler = make_job()
    run = Run.start(tmp_path, {}, accelerator)
    train_step(model, optimizer, scheduler)
    run.save_checkpoint(1, {"micro_step": 7})
    expected_next = torch.rand(3)
    train_step(model, optimizer, scheduler)
    weight_after_two, lr_after_two = model.weight.detach().clone(), scheduler.get_last_lr()

    accelerator, model, optimizer, scheduler = make_job(seed=1)
    run = Run.start(tmp_path, {}, accelerator)
    assert run.resume() == {"step": 1, "micro_step": 7}
    torch.testing.assert_close(torch.rand(3), expected_next)  # RNG now where the first run's was
    train_step(model, optimizer, scheduler)
    torch.testing.assert_close(model.weight.detach(), weight_after_two)
    assert scheduler.get_last_lr() == lr_after_two


def test_checkpoints_hold_only_trainable_weights(tmp_path):
    accelerator, model, optimizer, scheduler = make_job()
    checkpoint = Run.start(tmp_path, {}, accelerator).save_checkpoint(1, {})
    assert set(load_file(checkpoint / "model.safetensors")) == {"weight"}


def test_half_written_checkpoint_is_ignored_and_old_ones_are_pruned(tmp_path):
    accelerator, model, optimizer, scheduler = make_job()
    run = Run.start(tmp_path, {}, accelerator)
    for step in (1, 2, 3):
        run.save_checkpoint(step, {"micro_step": step}, keep=2)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-00000002", "step-00000003"]
    # What a kill during the next save leaves behind: a temporary folder without every file.
    partial = run.checkpoints / ".tmp-step-00000004"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    assert run.latest_checkpoint() == run.checkpoints / "step-00000003"
    assert run.resume()["step"] == 3
    run.save_checkpoint(4, {"micro_step": 4}, keep=2)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-00000003", "step-00000004"]


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    accelerator = make_job()[0]
    run = Run.start(tmp_path, {}, accelerator)
    run.log(1, {"loss": 1.0})
    run.save_checkpoint(1, {})
    run.log(2, {"loss": 2.0})  # logged by a run that died before checkpointing step 2
    assert run.resume()["step"] == 1
    assert run.metrics() == [{"step": 1, "loss": 1.0}]


def test_check_finite_names_the_step_and_value():
    check_finite(3, loss=0.5, grad_norm=2.0)
    with pytest.raises(NonFiniteError, match=r"step 12: loss = nan"):
        check_finite(12, loss=float("nan"), grad_norm=1.0)
    with pytest.raises(NonFiniteError, match=r"grad_norm = inf"):
        check_finite(1, grad_norm=float("inf"))


def test_a_run_opened_to_read_creates_nothing_and_skips_a_half_written_line(tmp_path):
    run = Run.open(tmp_path / "run")
    assert not run.path.exists() and run.metrics() == [] and run.final is None
    writer = Run.start(tmp_path / "run", {"beta": 5000}, make_job()[0])
    writer.log(1, {"loss": 0.7})
    with writer.metrics_file.open("a") as f:
        f.write('{"step": 2, "lo')  # a line being written right now
    assert run.config() == {"beta": 5000}
    assert run.metrics() == [{"step": 1, "loss": 0.7}]
    writer.save_final(lambda folder: (folder / "weights.bin").write_bytes(b"w"))
    assert run.final == run.path / "final" and (run.final / "weights.bin").read_bytes() == b"w"
    assert [p.name for p in run.path.iterdir() if p.name.startswith(".")] == []
