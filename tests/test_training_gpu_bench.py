"""The GPU training benchmark (DPO and SPO) runs end to end on tiny shapes, on the CPU when there is no GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_training_gpu_benchmark_runs_every_case_on_tiny_shapes(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(REPO / "benchmarks" / "training_gpu.py"), "--tiny", "--steps", "1"]
    command += ["--warmup", "1", "--in-process", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    cases = {case["name"]: case for case in json.loads(out.read_text())["cases"]}
    expected = {
        "sd15-lora-straightforward",
        "sd15-lora-ours-bf16",
        "sd15-full-ours-bf16",
        "sdxl-lora-ours-bf16",
    }
    expected |= {"sdxl-lora-ours-bf16-checkpointing", "sd15-full-ours-bf16-classic-attention"}
    expected |= {"sd15-spo-straightforward", "sd15-spo-ours"}
    assert expected <= cases.keys()
    for name, case in cases.items():
        if case["recipe"] == "dpo":
            assert case["pairs_per_s"] > 0 and case["model_gflop_per_step"] > 0, name
            assert 0 < case["mfu"] < 1 and case["achieved_tflops"] > 0, name
    for variant in ("straightforward", "ours"):
        # One timed step of 2 chains, 4 DDIM steps after 1 warm-up: 3 pools per chain, each kept at threshold 0.
        spo = cases[f"sd15-spo-{variant}"]
        assert spo["pairs_per_step"] == spo["pools_per_step"] == 6, variant
        assert spo["pairs_per_s"] > 0 and spo["first_step_s"] > 0, variant
        assert spo["sample_s_per_step"] > 0 and spo["train_s_per_step"] > 0, variant
        assert (spo["peak_memory_gib"] is None) == (spo["device"] == "cpu"), variant
    spo, straight = cases["sd15-spo-ours"], cases["sd15-spo-straightforward"]
    assert spo["vs_straightforward"] == round(spo["pairs_per_s"] / straight["pairs_per_s"], 2)
    for family, mode in (("sd15", "lora"), ("sd15", "full"), ("sdxl", "lora")):
        # The same UNet work in both configurations: one call of 2B (plus the reference) or four of B.
        straight = cases[f"{family}-{mode}-straightforward"]
        ours = cases[f"{family}-{mode}-ours-bf16"]
        assert ours["model_gflop_per_step"] == pytest.approx(straight["model_gflop_per_step"], rel=0.01)
        assert ours["vs_straightforward"] == round(ours["pairs_per_s"] / straight["pairs_per_s"], 2)
