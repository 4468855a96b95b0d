"""The training speed benchmark runs end to end for two steps of every recipe."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_training_speed_benchmark_compares_every_recipe_for_two_steps(tmp_path):
    out = tmp_path / "speed.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "training_speed.py"),
        "--in-process",
        "--prompts",
        "6",
    ]
    command += ["--steps", "1", "--spo-steps", "1", "--spm-steps", "1", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    recipes = json.loads(out.read_text())["recipes"]
    assert sorted(recipes) == ["dpo-full", "dpo-lora", "spm", "spo"]
    for name, figures in recipes.items():
        assert figures["steps"] == 2
        for variant in ("ours", "straightforward"):
            assert figures[variant]["pairs"] > 0 and figures[variant]["cpu_s"] > 0, (name, variant)
        assert figures["ratio_pairs_per_cpu_s"] == round(
            figures["ours"]["pairs_per_cpu_s"] / figures["straightforward"]["pairs_per_cpu_s"], 2
        )
        # Equal up to float rounding: SPO's straightforward reference is a second UNet, and the SPM's
        # cached latents are rounded differently from re-encoded ones, which its decoded x0s' 8-bit
        # pixels can turn into a step of one level.
        tolerance = {"spo": 1e-6, "spm": 1e-4}.get(name, 0.0)
        assert math.isclose(*figures["first_loss"].values(), rel_tol=tolerance), name
    for name in ("dpo-lora", "dpo-full", "spo"):
        # Same pairs, noise and timesteps: the weights agree up to rounding. Adam's first steps move a
        # weight by about lr x sign(grad), so a near-zero gradient whose sign rounding flips can differ
        # by 2 lr: bound the RMS difference, in units of lr x steps.
        assert recipes[name]["weights"]["rms_in_lr_steps"] < 0.02, recipes[name]["weights"]
    for name in ("dpo-lora", "dpo-full"):
        # Policy = reference at the first DPO step, in both configurations (SPO's first round logs
        # the mean over its updates, the later ones after the policy moved).
        assert math.isclose(recipes[name]["first_loss"]["ours"], math.log(2), abs_tol=1e-6), name
        assert recipes[name]["feature_cache_cpu_s"] > 0
