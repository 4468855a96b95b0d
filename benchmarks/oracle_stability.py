"""How far the shapes world's oracle itself decides held-out pairs by invisible pixel detail.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/oracle_stability.py --copies 8 --sigmas 0.5 1 2

The scorer's held-out accuracy is measured on the toy model's candidates for the 432 held-out
captions x seeds 0-3, every same-caption pair the oracle decides (the evaluation of
`workbench toy train-scorer`). The oracle thresholds the brightest channel at 90 and matches the
bounding-box crop of that mask against templates, so one faint pixel crossing the threshold can
move its shape call. Each image is copied ``--copies`` times with Gaussian pixel noise of each
``--sigmas`` (in 0-255 levels, rounded back to 8 bits) and read again. Per sigma the table gives:

- flips: the share of (decided pair, copy) whose oracle order differs from the clean image's
  (reversed or tied);
- ceiling: the mean over decided pairs of the share of copies ordered like the clean pair, with a
  tie counting half: what a scorer that cannot tell a copy from its clean image could reach if
  the clean order were drawn like a copy's;
- the shipped scorer's accuracy on the decided pairs that no copy flips (stable) and on the rest.

Results go to ``--out`` (JSON) and stdout (a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import StableDiffusionPipeline  # noqa: E402

from reward_models.shapes import ShapesOracle, held_out_captions  # noqa: E402
from reward_models.spec import scorer_from_spec  # noqa: E402
from workbench.toy import TOY_MODEL_DIR, TOY_SCORER_DIR  # noqa: E402
from workbench.toy.config import ToyScorerConfig  # noqa: E402
from workbench.toy.scorer import spaced, toy_candidates  # noqa: E402


def noisy(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    """The image with Gaussian noise of ``sigma`` levels per channel, rounded back to 8 bits."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    return Image.fromarray(
        np.clip(np.rint(pixels + rng.normal(0, sigma, pixels.shape)), 0, 255).astype(np.uint8)
    )


def agreement(scores: np.ndarray, first: np.ndarray, second: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per pair, 1 where `scores` order it like `clean` (the oracle's signs), 0.5 for a tie, 0 otherwise."""
    same = np.sign(scores[first] - scores[second]) * clean
    return (same > 0) + 0.5 * (same == 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = ToyScorerConfig()
    parser.add_argument("--captions", type=int, default=defaults.eval_captions)
    parser.add_argument("--seeds", type=int, default=defaults.eval_candidates)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--scorer", default=f"pickscore:{TOY_SCORER_DIR}")
    parser.add_argument("--out", type=Path, default=Path("/tmp/oracle_stability.json"))
    args = parser.parse_args()

    start = time.process_time()
    pipe = StableDiffusionPipeline.from_pretrained(str(TOY_MODEL_DIR))
    pipe.set_progress_bar_config(disable=True)
    candidates = toy_candidates(pipe, spaced(held_out_captions(), args.captions), range(args.seeds))
    first, second, label = candidates.pairs()
    decided = label != 0.5
    first, second = first[decided], second[decided]
    clean = np.sign(candidates.scores[first] - candidates.scores[second])
    scores = scorer_from_spec(args.scorer).score(candidates.images, candidates.captions)
    scorer_right = agreement(scores, first, second, clean)

    oracle = ShapesOracle()
    rows = []
    for sigma in args.sigmas:
        rng = np.random.default_rng(0)
        agree = np.zeros((args.copies, len(clean)))
        for copy in range(args.copies):
            images = [noisy(image, sigma, rng) for image in candidates.images]
            agree[copy] = agreement(oracle.score(images, candidates.captions), first, second, clean)
        stable = (agree == 1).all(0)
        rows.append(
            {
                "sigma": sigma,
                "decided": len(clean),
                "flips": float(1 - (agree == 1).mean()),
                "ceiling": float(agree.mean()),
                "stable_pairs": int(stable.sum()),
                "scorer_on_stable": float(scorer_right[stable].mean()),
                "scorer_on_unstable": float(scorer_right[~stable].mean()) if (~stable).any() else None,
            }
        )
    result = {
        "scorer": args.scorer,
        "scorer_accuracy": float(scorer_right.mean()),
        "rows": rows,
        "cpu_seconds": round(time.process_time() - start, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"scorer accuracy on all decided pairs: {result['scorer_accuracy']:.3f}")
    print("| sigma | flips | ceiling | stable pairs | scorer on stable | scorer on the rest |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        rest = "-" if row["scorer_on_unstable"] is None else f"{row['scorer_on_unstable']:.3f}"
        print(
            f"| {row['sigma']} | {row['flips']:.3f} | {row['ceiling']:.3f} | {row['stable_pairs']} / {row['decided']} "
            f"| {row['scorer_on_stable']:.3f} | {rest} |"
        )
    print(f"{result['cpu_seconds']} CPU-s")


if __name__ == "__main__":
    main()
