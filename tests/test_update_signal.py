"""The update-signal benchmark: its estimator by hand, and the script end to end on the toy model."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import write_snapshot

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "update_signal.py"


def load_benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when it runs as a script: its sibling modules import
    spec = importlib.util.spec_from_file_location("update_signal", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_signal_statistics_match_the_hand_computed_estimator(monkeypatch):
    stats = load_benchmark(monkeypatch).signal_statistics(torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]]))
    # sum = (6, 3): |sum|^2 = 45; sum |g_i|^2 = 1 + 9 + 13 = 23; signal = (45 - 23) / (3 * 2)
    assert stats["signal"] == pytest.approx(22 / 6)
    # mean (2, 1): squared deviations 1 + 1, 1 + 1, 0 + 4 = 8, over n - 1 = 2
    assert stats["noise"] == pytest.approx(4.0)
    assert stats["pairs_for_snr_1"] == pytest.approx(4.0 / (22 / 6))
    assert stats["pairs"] == 3


def test_signal_statistics_see_no_signal_in_opposite_gradients(monkeypatch):
    benchmark = load_benchmark(monkeypatch)
    stats = benchmark.signal_statistics(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    assert stats["signal"] == pytest.approx(-1.0)
    assert math.isinf(stats["pairs_for_snr_1"])
    assert stats["split_half_cosine"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        benchmark.signal_statistics(torch.ones(1, 2))


def test_update_signal_runs_on_the_toy_model(tmp_path):
    snapshot = write_snapshot(tmp_path / "snapshot", n_pairs=6)
    out = tmp_path / "signal.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--dataset",
        str(snapshot),
        "--spo-rounds",
        "1",
        "--dpo-pairs",
        "4",
    ]
    result = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["dpo"]["pairs"] == 4
    assert figures["spo"]["pairs"] >= 2
    for recipe in ("spo", "dpo"):
        assert figures[recipe]["noise"] > 0
        assert -1 <= figures[recipe]["split_half_cosine"] <= 1
    assert figures["spo"]["sample_and_judge_cpu_s_per_pair"] > 0
    assert figures["parameters"] > 0
