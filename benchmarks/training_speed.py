"""Training speed of each recipe against a straightforward configuration of itself, in one run (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/training_speed.py --out benchmarks/out/training_speed.json

On the shipped toy model (32 px) with pairs the toy model drew and the shapes oracle judged:

- DPO LoRA and DPO full. "ours" is `training.dpo.main` with its defaults (cached latents and text
  embeddings, winner and loser in one UNet call, the LoRA reference as the same UNet with its
  adapter off, fused AdamW, metrics written every ``log_every`` steps). "straightforward" is what
  the research code does (`straightforward.straightforward_dpo`): fp32, latents and text
  embeddings encoded again every step, a separate reference UNet (a copy, for LoRA too), and
  winner, loser and both reference predictions as four UNet calls, with the default AdamW. Both
  draw the same pairs, timesteps and noise (`training.dpo.make_batch`), so their first losses and
  their weights after N steps must agree up to float rounding. ``--compile`` adds "ours" with
  ``compile_unet`` and reports the compile time on its own.
- SPO: "ours" is `training.spo.main`; "straightforward" is the same run with the official code's
  update (`straightforward.straightforward_spo_training`: a separate reference UNet, the policy and
  the reference called once for the winners and once for the losers). The sampling is the same in
  both, as it is in the official code; the same chains give the same pairs, so first losses and
  weights must agree up to float rounding.
- SPM: "ours" is `training.spm.main` (latents and prompt embeddings encoded once per image and
  prompt, ``cache_latents``); "straightforward" encodes every batch's images and prompts again, as
  the official SPM code does.

Each configuration runs in a fresh process (so its peak RSS is its own) on one thread. The steady
figure of a recipe run is timed from the end of its first optimizer step to the end of its last (a
global optimizer step hook), which leaves out loading, the feature cache, compilation and the final
save; those are reported on their own. Figures: pairs per process CPU-second and per wall second,
peak RSS, first-step loss and the largest weight difference after 1 + N steps in units of learning
rate x steps (Adam moves a weight by about the learning rate per step). ``--levers`` also times single levers on the
UNet: the LoRA reference in the same call as the policy, channels_last, bf16 autocast, fused AdamW.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from figures import StepClock, publish, run_fresh  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from straightforward import straightforward_dpo, straightforward_update  # noqa: E402

from training import dpo  # noqa: E402
from training.config import DPOConfig, SPMConfig, SPOConfig  # noqa: E402
from training.data import preference_pairs  # noqa: E402
from training.lora import write_lora  # noqa: E402
from training.parts import load_parts  # noqa: E402
from training.runs import Run  # noqa: E402
from workbench.toy import TOY_IMAGE_SIZE, TOY_MODEL_DIR  # noqa: E402

RECIPES = ("dpo-lora", "dpo-full", "spo", "spm")


# --- one configuration in one process ------------------------------------------------------------


def dpo_config(dataset: Path, out: Path, mode: str, steps: int, **overrides) -> DPOConfig:
    options = {
        "pretrained_model": str(TOY_MODEL_DIR),
        "dataset": dataset,
        "output_dir": out,
        "mode": mode,
        "resolution": TOY_IMAGE_SIZE,
        "batch_size": 8,
        "max_steps": steps,
        "learning_rate": 1e-4 if mode == "lora" else 1e-5,
        "warmup_fraction": 0.0,
        "cache_dir": out.parent / f"cache-{mode}",  # each mode builds its own
    }
    return DPOConfig(**{**options, **overrides})


def spo_config(out: Path, steps: int) -> SPOConfig:
    from reward_models.shapes import train_captions

    return SPOConfig(
        pretrained_model=str(TOY_MODEL_DIR),
        output_dir=out,
        prompts=tuple(train_captions()[:64]),
        scorer="shapes-oracle",
        score_scale=10.0,
        resolution=TOY_IMAGE_SIZE,
        max_steps=steps,
    )


def spm_config(dataset: Path, reward_model: Path, out: Path, steps: int, cache_latents: bool = True) -> SPMConfig:
    return SPMConfig(
        pretrained_model=str(TOY_MODEL_DIR),
        reward_model=str(reward_model),
        dataset=dataset,
        output_dir=out,
        resolution=TOY_IMAGE_SIZE,
        batch_size=8,
        max_steps=steps,
        eval_fraction=0.0,
        cache_latents=cache_latents,
    )


def run_one(job: dict) -> dict:
    """Runs one configuration for ``job["steps"]`` steps in this process and measures it."""
    torch.set_num_threads(job["threads"])
    out, steps, recipe = Path(job["out"]), job["steps"], job["recipe"]
    start = time.process_time(), time.perf_counter()
    if recipe.startswith("dpo") and job["variant"] == "straightforward":
        cfg = dpo_config(Path(job["dataset"]), out, recipe.removeprefix("dpo-"), steps)
        parts = load_parts(cfg.pretrained_model)
        trainer = straightforward_dpo(cfg, parts, preference_pairs(cfg.dataset), torch.device("cpu"))
        unet, losses, clock = trainer.unet, [], StepClock()
        for i in range(steps):
            losses.append(trainer.step(i))
            clock.tick()
        final = out / "final"
        if cfg.mode == "full":
            unet.save_pretrained(final / "unet")
        else:
            write_lora(unet, False, final)
        pairs = [cfg.batch_size] * steps
        return measured(job, start, clock, pairs, losses[0], cfg.learning_rate)
    cache_cpu_s: list[float] = []
    with StepClock.on_every_optimizer() as clock:
        if recipe.startswith("dpo"):
            overrides = {"compile_unet": True} if job["variant"] == "compiled" else {}
            cfg = dpo_config(Path(job["dataset"]), out, recipe.removeprefix("dpo-"), steps, **overrides)
            with timing_feature_cache(cache_cpu_s):
                dpo.main(cfg)
        elif recipe == "spo":
            from training import spo

            cfg = spo_config(out, steps)
            with straightforward_update(job["variant"] == "straightforward", cfg.pretrained_model):
                spo.main(cfg)
        else:
            from training import spm

            straightforward = job["variant"] == "straightforward"
            cfg = spm_config(Path(job["dataset"]), Path(job["reward_model"]), out, steps, not straightforward)
            spm.main(cfg)
    metrics = Run.open(out).metrics()
    updates = None
    if recipe == "spo":
        pairs = [m["pairs"] for m in metrics]
        updates = [m.get("updates", 0) for m in metrics]
    else:
        pairs = [cfg.batch_size * cfg.gradient_accumulation_steps] * len(metrics)
    run = measured(job, start, clock, pairs, metrics[0].get("loss"), cfg.learning_rate, updates)
    return {**run, "feature_cache_cpu_s": round(sum(cache_cpu_s), 3)} if cache_cpu_s else run


@contextlib.contextmanager
def timing_feature_cache(cpu_s: list[float]):
    """Appends the process CPU seconds of every `training.features.cached_features` call DPO makes
    in the block to ``cpu_s`` (the cache is built, or found, there)."""
    build = dpo.cached_features

    def timed(*args, **kwargs):
        start = time.process_time()
        try:
            return build(*args, **kwargs)
        finally:
            cpu_s.append(time.process_time() - start)

    dpo.cached_features = timed
    try:
        yield
    finally:
        dpo.cached_features = build


def measured(
    job: dict,
    start: tuple[float, float],
    clock: StepClock,
    pairs: list,
    first_loss,
    lr: float,
    updates: list[int] | None = None,
):
    """Whole-run and steady figures of a run that took ``len(pairs)`` steps of ``pairs[i]`` pairs
    (and ``updates[i]`` optimizer steps, where they differ: `StepClock.steady`)."""
    cpu, wall = clock.steady(len(pairs), updates)
    steady_pairs = sum(pairs[1:])
    return {
        **job,
        "total_cpu_s": time.process_time() - start[0],
        "total_wall_s": time.perf_counter() - start[1],
        "pairs": steady_pairs,
        "cpu_s": round(cpu, 4),
        "wall_s": round(wall, 4),
        "pairs_per_cpu_s": round(steady_pairs / cpu, 2) if steady_pairs else None,
        "pairs_per_s": round(steady_pairs / wall, 2) if steady_pairs else None,
        "first_loss": first_loss,
        "learning_rate": lr,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_fresh_process(job: dict) -> dict:
    """Runs `run_one` in a new Python process with one thread and its own inductor cache."""
    return run_fresh(
        __file__,
        "--job",
        job,
        f"{job['recipe']} {job['variant']}",
        OMP_NUM_THREADS=str(job["threads"]),
        TORCHINDUCTOR_CACHE_DIR=str(Path(job["out"]).parent / f"inductor-{Path(job['out']).name}"),
    )


# --- comparing the configurations ----------------------------------------------------------------


def weight_difference(a: Path, b: Path) -> tuple[float, float, int]:
    """Largest and root-mean-square difference over every tensor of the safetensors files under
    ``b`` and their namesakes under ``a`` (a full run's ``a`` also holds the frozen VAE and text
    encoder), and the number of elements compared."""
    files = sorted(p.relative_to(b) for p in b.rglob("*.safetensors"))
    if not files or not all((a / name).is_file() for name in files):
        raise RuntimeError(f"{a} does not hold the weight files of {b}")
    worst, squares, n = 0.0, 0.0, 0
    for name in files:
        x, y = load_file(a / name), load_file(b / name)
        for key, tensor in y.items():
            difference = tensor.float() - x[key].float()
            worst = max(worst, difference.abs().max().item())
            squares += difference.pow(2).sum().item()
            n += tensor.numel()
    return worst, (squares / n) ** 0.5, n


STEADY = ("pairs", "cpu_s", "wall_s", "pairs_per_cpu_s", "pairs_per_s")


def bench_recipe(recipe: str, base: dict, steps: int, compile_too: bool, in_process: bool) -> dict:
    """Both configurations of one recipe, alternated, and their comparison."""

    def job(variant: str, n: int, tag: str) -> dict:
        out = str(Path(base["root"]) / f"{recipe}-{variant}-{tag}")
        spec = {**base, "recipe": recipe, "variant": variant, "steps": n, "out": out}
        return run_one(spec) if in_process else in_fresh_process(spec)

    def figures(run: dict) -> dict:
        return {**{key: run[key] for key in STEADY}, "peak_rss_mb": round(run["peak_rss_mb"])}

    out: dict = {"recipe": recipe, "steps": 1 + steps}
    if recipe.startswith("dpo"):
        # Builds the feature cache, timed alone; the runs below find it built.
        out["feature_cache_cpu_s"] = job("ours", 1, "setup")["feature_cache_cpu_s"]
    ours = job("ours", 1 + steps, "long")
    straight = job("straightforward", 1 + steps, "long")
    out["ours"], out["straightforward"] = figures(ours), figures(straight)
    out["ratio_pairs_per_cpu_s"] = round(ours["pairs_per_cpu_s"] / straight["pairs_per_cpu_s"], 2)
    out["ratio_pairs_per_s"] = round(ours["pairs_per_s"] / straight["pairs_per_s"], 2)
    out["first_loss"] = {"ours": ours["first_loss"], "straightforward": straight["first_loss"]}
    worst, rms, n = weight_difference(Path(ours["out"]) / "final", Path(straight["out"]) / "final")
    scale = ours["learning_rate"] * (1 + steps)  # how far Adam can move a weight in these steps
    out["weights"] = {
        "elements": n,
        "max_abs_difference": worst,
        "max_in_lr_steps": round(worst / scale, 4),
        "rms_in_lr_steps": round(rms / scale, 6),
    }
    if compile_too and recipe.startswith("dpo"):
        # Compile time: a one-step run compiled against one not, both finding the cache built.
        short = job("ours", 1, "short")
        compiled_short = job("compiled", 1, "short")
        compiled = job("compiled", 1 + steps, "long")
        out["compiled"] = {
            **figures(compiled),
            "compile_cpu_s": round(compiled_short["total_cpu_s"] - short["total_cpu_s"], 1),
            "compile_wall_s": round(compiled_short["total_wall_s"] - short["total_wall_s"], 1),
        }
        saved = 1 / ours["pairs_per_cpu_s"] - 1 / compiled["pairs_per_cpu_s"]
        out["compiled"]["pays_back_after_pairs"] = (
            round(out["compiled"]["compile_cpu_s"] / saved) if saved > 0 else None
        )
    return out


# --- single levers on the UNet ---------------------------------------------------------------------


def levers(threads: int, batch: int, repeats: int = 5) -> dict:
    """CPU milliseconds per call of single levers on the toy UNet, alternated, medians."""
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    unet = UNet2DConditionModel.from_pretrained(TOY_MODEL_DIR, subfolder="unet")
    generator = torch.Generator().manual_seed(0)
    side = unet.config.sample_size
    x = torch.randn(4 * batch, unet.config.in_channels, side, side, generator=generator)
    hidden = torch.randn(4 * batch, 77, unet.config.cross_attention_dim, generator=generator)
    t = torch.randint(1000, (4 * batch,), generator=generator)
    n = 2 * batch  # winners and losers

    def train(rows: int, sample: torch.Tensor, bf16: bool = False) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = unet(sample[:rows], t[:rows], hidden[:rows]).sample
        out.float().pow(2).mean().backward()

    def separate() -> None:
        train(n, x)
        with torch.no_grad():
            unet(x[n:], t[n:], hidden[n:])

    params = list(unet.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    loop_adam = torch.optim.AdamW(params, lr=1e-5, foreach=False)
    fused_adam = torch.optim.AdamW(params, lr=1e-5, fused=True)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    cases = {
        "policy_and_reference_as_two_calls": separate,
        "policy_and_reference_in_one_call": lambda: train(2 * n, x),
        "fwd_bwd_contiguous": lambda: train(n, x),
        "fwd_bwd_channels_last": lambda: train(n, channels_last),
        "fwd_bwd_bf16_autocast": lambda: train(n, x, bf16=True),
        "adamw_loop": loop_adam.step,
        "adamw_fused": fused_adam.step,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            unet.to(memory_format=torch.channels_last if "channels_last" in name else torch.contiguous_format)
            fn()
            start = time.process_time()
            fn()
            times[name].append((time.process_time() - start) * 1000)
    return {name: round(sorted(ms)[len(ms) // 2], 2) for name, ms in times.items()}


# --- data -------------------------------------------------------------------------------------------


def make_dataset(home: Path, prompts: int) -> Path:
    """Toy-model candidates for the first training captions, judged by the shapes oracle."""
    from datastore.datasets import DatasetFilters, create_dataset_version
    from datastore.store import Store
    from labeling.ai_feedback import label_with_scorer
    from reward_models.shapes import ShapesOracle, train_captions
    from workbench.generation import generate_pairs
    from workbench.generation_config import GenerationConfig
    from workbench.pipelines import load_pipeline

    store = Store.open(home)
    pipe = load_pipeline(str(TOY_MODEL_DIR), device="cpu")
    cfg = GenerationConfig(per_prompt=4, seed=0, batch_size=64, pool_k=0)
    generate_pairs(store, pipe, "toy", train_captions()[:prompts], cfg, progress=False)
    label_with_scorer(store, ShapesOracle(), kinds=("final",))
    return create_dataset_version(store, "speed", DatasetFilters(kinds=("final",), include_ties=False)).path


def tiny_reward_model(folder: Path) -> Path:
    """A seeded tiny CLIP for the SPM recipe to start from (the tests' builder)."""
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_clip import build_tiny_clip

    return build_tiny_clip(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--steps", type=int, default=30, help="Measured DPO steps N (after a first one).")
    parser.add_argument("--spo-steps", type=int, default=3, help="Measured SPO steps.")
    parser.add_argument("--spm-steps", type=int, default=20, help="Measured SPM steps.")
    parser.add_argument("--prompts", type=int, default=48, help="Training captions to draw pairs for.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="Also time ours with compile_unet.")
    parser.add_argument("--levers", action="store_true", help="Also time single levers on the UNet.")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="Run every configuration in this process (quick check; peak RSS is then the process's).",
    )
    parser.add_argument("--out", type=Path, help="Write the figures as JSON here too.")
    args = parser.parse_args()
    if args.job:
        print(json.dumps(run_one(json.loads(args.job))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = {
            "root": str(root),
            "threads": args.threads,
            "dataset": str(make_dataset(root / "home", args.prompts)),
        }
        if "spm" in args.recipes:
            base["reward_model"] = str(tiny_reward_model(root / "clip"))
        figures: dict = {
            "model": "toy",
            "threads": args.threads,
            "pairs_in_dataset": len(preference_pairs(base["dataset"])),
            "recipes": {},
        }
        for recipe in args.recipes:
            steps = {"spo": args.spo_steps, "spm": args.spm_steps}.get(recipe, args.steps)
            figures["recipes"][recipe] = bench_recipe(recipe, base, steps, args.compile, args.in_process)
            print(json.dumps(figures["recipes"][recipe], indent=2), flush=True)
        if args.levers:
            figures["levers_cpu_ms"] = levers(args.threads, batch=8)
    publish(figures, args.out)


if __name__ == "__main__":
    main()
