"""The GPU generation benchmark runs end to end on tiny shapes, on the CPU when there is no GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_generation_gpu_benchmark_runs_on_tiny_shapes(tmp_path):
    out = tmp_path / "generation_gpu.json"
    command = [sys.executable, str(REPO / "benchmarks" / "generation_gpu.py"), "--tiny", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    prompts = figures["prompts"]
    assert figures["image_size"] == 16 and figures["num_inference_steps"] == 2
    # --tiny: 2 candidates per prompt (one pair each), pools of 2 at steps 1 and 2 of every chain.
    pairs, plain = figures["pairs"], figures["plain_pipeline_same_images"]
    assert pairs["images"] == plain["images"] == 2 * prompts and pairs["pairs"] == prompts
    pools, chains = figures["step_pools"], figures["plain_pipeline_one_image_per_prompt"]
    assert pools["chains"] == chains["images"] == prompts and pools["steps"] == [1, 2]
    assert pools["pools"] == 2 * prompts and pools["images"] == 2 * pools["pools"]
    for name in ("pairs", "plain_pipeline_same_images", "step_pools", "plain_pipeline_one_image_per_prompt"):
        assert figures[name]["seconds"] > 0, name
    if figures["device"] == "cpu":
        assert figures["dtype"] == "float32" and pairs["max_memory_gib"] is None
    # Ratios of the unrounded seconds, to 3 decimals; the seconds are written to 4 significant digits.
    for ratio, ours, theirs in (
        ("pairs_over_plain_time", pairs, plain),
        ("pools_over_plain_chain_time", pools, chains),
    ):
        expected = ours["seconds"] / theirs["seconds"]
        assert figures[ratio] == pytest.approx(expected, rel=1e-3, abs=1e-3), ratio
