"""How well shapes-world scorers order the pairs they were trained on, against fresh ones.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scorer_fit.py workbench/toy/scorer /tmp/other-scorer

For each scorer folder (made by `workbench toy train-scorer`), the pairwise accuracy against the
oracle on decided same-caption pairs of the toy model's candidates for the training captions it
was trained on, with the first ``--seeds`` of its training seeds (pairs it saw, mirrors aside),
next to the held-out accuracy its training log records. Every folder must have been trained on
the same captions and seed; the candidates are drawn once. Results go to stdout (Markdown) and
``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import StableDiffusionPipeline  # noqa: E402

from reward_models.shapes import train_captions  # noqa: E402
from reward_models.spec import scorer_from_spec  # noqa: E402
from workbench.toy import TOY_MODEL_DIR  # noqa: E402
from workbench.toy.scorer import pairwise_agreement, spaced, toy_candidates  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scorers", type=Path, nargs="+", help="Scorer folders with training_config.json.")
    parser.add_argument("--seeds", type=int, default=6, help="Training seeds to draw candidates for.")
    parser.add_argument("--out", type=Path, default=Path("/tmp/scorer_fit.json"))
    args = parser.parse_args()

    # Plain dicts: a folder from an earlier version of the recipe may hold options it no longer has.
    configs = [json.loads((p / "training_config.json").read_text()) for p in args.scorers]
    drawn = {(c["seed"], c["captions"]) for c in configs}
    if len(drawn) != 1:
        raise SystemExit(f"the scorers were trained on different captions or seeds: {sorted(drawn)}")
    first = configs[0]
    if args.seeds > min(c["candidates"] for c in configs):
        raise SystemExit(f"--seeds {args.seeds} is more than some scorer's candidates per caption")
    if first["seed"]:  # a scorer's seeds start at seed x candidates: only with seed 0 are they shared
        raise SystemExit("only scorers trained with --seed 0 share their first training seeds")
    start = time.process_time()
    pipe = StableDiffusionPipeline.from_pretrained(str(TOY_MODEL_DIR))
    candidates = toy_candidates(pipe, spaced(train_captions(), first["captions"]), range(args.seeds))
    rows = []
    for path, cfg in zip(args.scorers, configs, strict=True):
        fit = pairwise_agreement(scorer_from_spec(f"pickscore:{path}"), candidates)
        log = json.loads((path / "training_log.json").read_text())
        rows.append(
            {
                "scorer": str(path),
                "candidates": cfg["candidates"],
                "training_pairs_accuracy": fit["accuracy"],
                "training_pairs_decided": fit["decided"],
                "held_out_accuracy": (log.get("evaluation") or {}).get("accuracy"),
            }
        )
    args.out.write_text(json.dumps({"rows": rows, "cpu_s": time.process_time() - start}, indent=2) + "\n")
    print("| scorer | training pairs ordered like the oracle | held-out |")
    print("| --- | --- | --- |")
    for row in rows:
        held_out = row["held_out_accuracy"]
        print(
            f"| {row['scorer']} | {row['training_pairs_accuracy']:.1%} of {row['training_pairs_decided']:,} | "
            + (f"{held_out:.1%} |" if held_out is not None else "- |")
        )
    print(f"{time.process_time() - start:.1f} CPU-s")


if __name__ == "__main__":
    main()
