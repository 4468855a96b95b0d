"""Checks that need a CUDA device: deselected by default, run with `make test-gpu` on a GPU machine."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny_sd15, tiny_dpo_config, write_snapshot

from training.dpo import main

pytestmark = pytest.mark.gpu


def test_dpo_trains_two_steps_in_bf16_on_cuda(tmp_path):
    assert torch.cuda.is_available(), "this test needs a CUDA device"
    model = build_tiny_sd15(tmp_path / "sd15")
    snapshot = write_snapshot(tmp_path / "snapshot", n_pairs=4)
    final = main(tiny_dpo_config(model, snapshot, tmp_path / "run", mixed_precision="bf16"))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in metrics)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # adapter at zero: policy = reference
    weights = load_file(final / "pytorch_lora_weights.safetensors")
    assert any(name.endswith("lora.up.weight") and w.abs().sum() > 0 for name, w in weights.items())
    assert torch.cuda.max_memory_allocated() > 0
