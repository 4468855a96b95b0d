"""Closed rounds on the shipped toy model with tiny settings: records, lineage, human waits, the demo CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from diffusers import StableDiffusionPipeline
from typer.testing import CliRunner

from datastore.records import NewJudgment, ensure_annotator, insert_judgments, model_lineage, register_model
from datastore.store import Store
from reward_models.shapes import held_out_captions
from workbench.cli import app
from workbench.generation import generate_pairs
from workbench.generation_config import GenerationConfig
from workbench.pipelines import load_pipeline
from workbench.rounds.collect import round_curation
from workbench.rounds.config import RoundConfig, RoundCuration
from workbench.rounds.driver import ensure_base_model, launch_round, resume_round, run_round
from workbench.rounds.errors import RoundError, RoundWaiting
from workbench.rounds.evaluate import held_out_human_accuracy
from workbench.rounds.reading import get_round, list_rounds
from workbench.toy import DEFAULT_GUIDANCE, TOY_MODEL_DIR, TOY_SCORER_DIR

TINY = {
    "num_prompts": 3,
    "per_prompt": 2,
    "num_inference_steps": 4,
    "eval_prompts": 3,
    "eval_seeds": (0, 1),
    "eval_steps": 4,
    "training": {"max_steps": 2, "batch_size": 2},
}
"""3 prompts x 1 pair, 2 DPO steps, 3 held-out captions x 2 seeds at 4 DDIM steps."""

DEMO_ARGS = ["demo", "--rounds", "2", "--prompts", "3", "--train-steps", "2", "--eval-prompts", "3"]
DEMO_ARGS += ["--eval-seeds", "2", "--steps", "4"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A home after `workbench demo --json` with tiny settings (two rounds), and what it printed."""
    home = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["--home", str(home), *DEMO_ARGS, "--json"])
    assert result.exit_code == 0, result.output
    return home, json.loads(result.stdout)


def rows(store: Store, sql: str, params: list | None = None) -> list[tuple]:
    with store.read() as con:
        return con.execute(sql, params or []).fetchall()


def test_demo_prints_one_row_per_round(demo) -> None:
    home, output = demo
    assert (output["home"], output["base_model"]) == (str(home.resolve()), 1)
    table = output["rounds"]
    assert [(r["round"], r["status"], r["parent"], r["model"]) for r in table] == [
        (1, "finished", 1, 2),
        (2, "finished", 2, 3),
    ]
    # 3 prompts x 6 pairs (every two of 4 candidates), each judged once by the oracle
    assert all(r["pairs"] == 18 and r["judgments"] == 18 for r in table)
    assert all(0.0 <= r["win_vs_parent"] <= 1.0 and 0.0 <= r["win_vs_base"] <= 1.0 for r in table)


def test_a_round_records_every_stage(demo) -> None:
    home, _ = demo
    store = Store.open(home)
    first = get_round(store, 1)
    r = first.results
    assert first.status == "finished" and first.parent_model_id == 1 and first.model_id == 2
    # Generation: 3 prompts x 4 candidates, every two paired; the pairs carry the round id.
    assert r["generation"]["images"] == 12 and len(r["generation"]["prompts"]) == 3
    assert rows(store, "SELECT count(*) FROM pairs WHERE round_id = 1") == [(18,)]
    drawn_by = rows(
        store,
        "SELECT DISTINCT g.model_id FROM pairs p JOIN images i ON i.id IN (p.image_a, p.image_b) "
        "JOIN generations g ON g.id = i.generation_id WHERE p.round_id = 1",
    )
    assert drawn_by == [(1,)]
    # Judgments: the oracle judged each of them once.
    assert r["judgments"] == {"annotator": "shapes-oracle@1", "ai": 18, "human": 0, "total": 18}
    assert rows(
        store, "SELECT count(*) FROM judgments j JOIN pairs p ON p.id = j.pair_id WHERE p.round_id = 1"
    ) == [(18,)]
    # Dataset version: recorded with its hash; only the round's decided pairs.
    version = rows(
        store, "SELECT id, content_hash, n_pairs FROM dataset_versions WHERE id = ?", [first.dataset_version]
    )
    assert version == [(r["dataset"]["id"], r["dataset"]["content_hash"], r["dataset"]["n_pairs"])]
    manifest = json.loads((Path(r["dataset"]["path"]) / "manifest.json").read_text())
    assert manifest["content_hash"] == r["dataset"]["content_hash"] and manifest["curation"]["round"] == 1
    decided = rows(
        store,
        "SELECT count(*) FROM judgments j JOIN pairs p ON p.id = j.pair_id WHERE p.round_id = 1 AND outcome <> 'tie'",
    )[0][0]
    assert r["dataset"]["n_pairs"] == decided
    # Training: the run folder with 2 logged steps and its config.
    run_dir = Path(first.run_dir)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run_dir / "config.json").read_text()) == r["training"]["config"]
    assert r["training"]["config"]["pretrained_model"] == str(TOY_MODEL_DIR)
    assert r["training"]["config"]["resolution"] == 32 and r["training"]["config"]["mode"] == "lora"
    assert r["training"]["config"]["random_flip"] is False  # captions name positions
    # Evaluation: 3 captions x 2 seeds; round 1's parent is the base, so both comparisons agree.
    vs_parent = r["evaluation"]["vs_parent"]
    assert vs_parent["wins"] + vs_parent["ties"] + vs_parent["losses"] == 6
    assert vs_parent["win_rate"] == pytest.approx((vs_parent["wins"] + 0.5 * vs_parent["ties"]) / 6)
    assert r["evaluation"]["vs_base"] == vs_parent
    # The registered checkpoint: parent, round, dataset version; a full pipeline folder that loads.
    model = rows(
        store, "SELECT name, kind, parent_id, round_id, dataset_version, path FROM models WHERE id = 2"
    )
    assert model[0][:5] == ("round-1", "full", 1, 1, first.dataset_version)
    metrics = rows(store, "SELECT name, value FROM metrics WHERE round_id = 1 ORDER BY name")
    assert dict(metrics)["win_rate_vs_parent"] == pytest.approx(vs_parent["win_rate"])
    tuned = StableDiffusionPipeline.from_pretrained(model[0][5]).unet.state_dict()
    base = StableDiffusionPipeline.from_pretrained(TOY_MODEL_DIR, torch_dtype=torch.float32).unet.state_dict()
    changed = [k for k in base if "attn" in k and not torch.equal(base[k], tuned[k])]
    assert changed, "the fused LoRA left every attention weight as it was"


def test_auto_rounds_chain_each_model_to_the_next(demo) -> None:
    home, _ = demo
    store = Store.open(home)
    first, second = list_rounds(store)
    assert second.parent_model_id == first.model_id
    with store.read() as con:
        lineage = model_lineage(con, second.model_id)
    assert [m["name"] for m in lineage] == ["round-2", "round-1", "toy"]
    # Round 2 generated from round 1's checkpoint, trained on top of it and compared with both.
    drawn_by = rows(
        store,
        "SELECT DISTINCT g.model_id FROM pairs p JOIN images i ON i.id = p.image_a "
        "JOIN generations g ON g.id = i.generation_id WHERE p.round_id = 2",
    )
    assert drawn_by == [(first.model_id,)]
    assert second.results["training"]["config"]["pretrained_model"] == first.results["checkpoint"]["path"]
    assert second.results["evaluation"]["base_model_id"] == 1
    assert second.results["generation"]["seed"] == 2 and first.results["generation"]["seed"] == 1


def test_round_list_and_show(demo) -> None:
    home, _ = demo
    listed = CliRunner().invoke(app, ["--home", str(home), "round", "list", "--json"])
    assert listed.exit_code == 0
    assert [(r["round"], r["parent"], r["model"]) for r in json.loads(listed.stdout)] == [(1, 1, 2), (2, 2, 3)]
    shown = CliRunner().invoke(app, ["--home", str(home), "round", "show", "2", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["dataset_version"].startswith("round-2-")
    missing = CliRunner().invoke(app, ["--home", str(home), "round", "show", "9"])
    assert missing.exit_code == 1 and "round 9 does not exist" in missing.output


def test_a_human_round_waits_for_judgments_and_continues_without_regenerating(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    config = RoundConfig.from_dict({**TINY, "feedback": "human", "human_judgments_per_pair": 2})
    with pytest.raises(RoundWaiting) as waiting:
        run_round(store, config)
    assert (waiting.value.missing, waiting.value.pairs) == (6, 3)  # 3 pairs x 2 judgments
    assert get_round(store, 1).status == "awaiting_judgments"
    held_out = add_held_out_human_pairs(store, ["a", "b"])  # judged pairs outside the round
    before = rows(store, "SELECT count(*) FROM images UNION ALL SELECT count(*) FROM generations")
    pairs = [r[0] for r in rows(store, "SELECT id FROM pairs WHERE round_id = 1 ORDER BY id")]
    with store.write() as con:
        ada, bob = ensure_annotator(con, "ada"), ensure_annotator(con, "bob")
        insert_judgments(
            con, [NewJudgment(pair_id=p, annotator_id=ada, source="app", outcome="a") for p in pairs]
        )
        insert_judgments(con, [NewJudgment(pair_id=pairs[0], annotator_id=bob, source="app", outcome="a")])
    with pytest.raises(RoundWaiting, match="waits for 2 human judgments on 2 pairs") as waiting:
        resume_round(store, 1)
    with store.write() as con:
        insert_judgments(
            con, [NewJudgment(pair_id=p, annotator_id=bob, source="app", outcome="b") for p in pairs[1:]]
        )
    done = resume_round(store, 1)
    assert done.status == "finished" and done.results["judgments"]["human"] == 6
    # Only the held-out pairs score the implicit preference: 2 pairs x 4 draws.
    assert done.results["evaluation"]["human"]["pairs"] == len(held_out) == 2
    assert done.results["evaluation"]["human"]["draws"] == 8
    assert rows(store, "SELECT count(*) FROM images UNION ALL SELECT count(*) FROM generations") == before
    # Pair 1: a, a -> a; pairs 2 and 3: a, b -> ties, left out.
    assert done.results["dataset"]["n_pairs"] == 1
    assert resume_round(store, 1) == done  # a finished round is returned as it is


def test_a_human_round_asking_more_than_the_queue_hands_out_is_refused(tmp_path: Path) -> None:
    """Pairs leave the annotation queue after ``overlap`` people: a round needing more would wait forever."""
    store = Store.open(tmp_path / "home")
    (store.home / "labeling.toml").write_text("overlap = 2\n")
    too_many = RoundConfig.from_dict({**TINY, "feedback": "both", "human_judgments_per_pair": 3})
    with pytest.raises(RoundError, match="asks for 3 human judgments per pair.*once 2 people judged it"):
        run_round(store, too_many)
    with pytest.raises(RoundError, match="asks for 3 human judgments per pair"):
        launch_round(store, too_many)
    assert rows(store, "SELECT count(*) FROM rounds UNION ALL SELECT count(*) FROM jobs") == [(0,), (0,)]
    (store.home / "labeling.toml").write_text("overlap = 3\n")
    with pytest.raises(RoundWaiting):
        run_round(store, too_many)


def test_bad_settings_and_unknown_parent_are_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(RoundError, match="per_prompt must be >= 2"):
        RoundConfig.from_dict({"per_prompt": 0})
    with pytest.raises(RoundError, match="recipe must be one of dpo, spo, spm-spo"):
        RoundConfig(recipe="ppo")
    with pytest.raises(RoundError, match="KEY=VALUE"):
        RoundConfig.from_dict({"training": ["beta"]})
    store = Store.open(tmp_path / "home")
    with pytest.raises(RoundError, match="parent model 7 is not a text-to-image checkpoint registered"):
        run_round(store, RoundConfig.from_dict(TINY), parent_model_id=7)
    assert rows(store, "SELECT count(*) FROM rounds") == [(0,)]
    assert ensure_base_model(store) == ensure_base_model(store) == 1


def test_a_home_made_by_a_moved_checkout_finds_the_toy_model_here(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    with store.write() as con:
        moved = register_model(con, "toy", str(tmp_path / "old-checkout" / "workbench/toy/model"), kind="base")
    assert ensure_base_model(store) == moved
    assert rows(store, "SELECT path FROM models") == [(str(TOY_MODEL_DIR),)]


def test_a_flat_config_recorded_by_an_older_round_loads_nested() -> None:
    recorded = {
        **{"num_prompts": 32, "per_prompt": 3, "pairing": "all", "final_pairs": True, "step_pools": True},
        **{"pool_k": 4, "num_inference_steps": 20, "guidance_scale": 3.0, "seed": 0, "feedback": "ai"},
        **{"min_agreement": 0.5, "include_ties": True, "consensus": "dawid_skene", "curation": None},
        **{"recipe": "spm", "training": ["max_steps=2", "eval_fraction=0"], "spo_training": [], "eval_seeds": [0, 1]},
    }
    config = RoundConfig.from_dict(recorded)
    assert (config.generation.per_prompt, config.generation.batch_size) == (3, 32)
    assert config.curation == RoundCuration(method="dawid_skene", min_agreement=0.5, include_ties=True)
    assert config.recipe == "spm-spo" and config.training == {"max_steps": 2, "eval_fraction": 0}
    assert RoundConfig.from_dict({**recorded, "curation": "kept"}).curation.saved == "kept"
    assert RoundConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_failed_stage_marks_the_round_failed_and_keeps_the_stages_done(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    with pytest.raises(RoundError, match="learning_rate must be > 0"):
        run_round(store, RoundConfig.from_dict({**TINY, "include_ties": True, "training": {"learning_rate": -1}}))
    failed = get_round(store, 1)
    assert failed.status == "failed" and "learning_rate must be > 0" in failed.error
    assert set(failed.results) == {"generation", "judgments", "dataset", "seconds", "cpu_seconds"}
    images = rows(store, "SELECT count(*) FROM images")
    with pytest.raises(RoundError, match="learning_rate must be > 0"):
        resume_round(store, 1)  # retried from the training stage: nothing drawn again
    assert rows(store, "SELECT count(*) FROM images") == images


def test_spo_and_spm_rounds_train_and_chain(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    base = {**TINY, "num_prompts": 2, "eval_prompts": 2, "include_ties": True}
    spo_steps = {"max_steps": 1, "prompts_per_step": 1, "num_inference_steps": 6, "warmup_steps": 1}
    spo = run_round(store, RoundConfig.from_dict({**base, "recipe": "spo", "training": spo_steps}))
    assert spo.status == "finished" and spo.results["training"]["config"]["scorer"] == "shapes-oracle"
    assert spo.results["training"]["config"]["prompts"] == spo.results["generation"]["prompts"]
    # SPO's chains are drawn with the round's guidance (the candidates' and the evaluation's), not the paper's 5.
    assert spo.results["training"]["config"]["guidance_scale"] == DEFAULT_GUIDANCE != 5.0
    spm_steps = {"max_steps": 1, "batch_size": 2, "eval_fraction": 0}
    spm = run_round(
        store,
        RoundConfig.from_dict(
            {
                **base,
                "recipe": "spm-spo",
                "step_pools": True,
                "pool_k": 2,
                "training": spm_steps,
                "spo_training": spo_steps,
            }
        ),
        spo.model_id,
    )
    training = spm.results["training"]
    # The SPM learns from the round's final and step pairs, then scores SPO's candidates.
    assert training["spm_config"]["dataset"] == spm.results["dataset"]["path"]
    assert spm.results["dataset"]["counts"]["step"] > 0
    assert training["config"]["scorer"] == f"spm:{Path(spm.run_dir) / 'spm' / 'final'}"
    # Unset options take the round's measured defaults: unguided x0s on both sides, the official range.
    assert training["spm_config"]["guidance_scale"] == training["config"]["judge_guidance_scale"] == 1.0
    assert training["config"]["guidance_scale"] == DEFAULT_GUIDANCE
    assert {k: training["config"][k] for k in ("warmup_steps", "max_timestep", "ema_decay", "score_scale")} == {
        "warmup_steps": 1,  # the test's own
        "max_timestep": 750,
        "ema_decay": 0.995,
        "score_scale": 1.0,
    }
    assert len((Path(spm.run_dir) / "spo" / "metrics.jsonl").read_text().splitlines()) == 1
    with store.read() as con:
        assert [m["name"] for m in model_lineage(con, spm.model_id)] == ["round-2", "round-1", "toy"]
        # Both outputs are registered: the SPM as a scorer whose parent is the CLIP it started from.
        scorer_id = spm.results["register"]["scorer_id"]
        kind, path, round_id, parent_path = con.execute(
            "SELECT m.kind, m.path, m.round_id, p.path FROM models m JOIN models p ON p.id = m.parent_id WHERE m.id = ?",
            [scorer_id],
        ).fetchone()
    # By default the SPM starts from the shapes world's PickScore.
    assert (kind, round_id, parent_path) == ("scorer", spm.id, str(TOY_SCORER_DIR))
    assert path == str((Path(spm.run_dir) / "spm" / "final").resolve())


def test_the_same_config_from_the_same_parent_reproduces_a_round_in_another_home(tmp_path: Path) -> None:
    config = RoundConfig.from_dict({**TINY, "num_prompts": 2, "per_prompt": 4, "eval_prompts": 2})
    first, second = (run_round(Store.open(tmp_path / name), config) for name in ("a", "b"))
    for key in ("generation", "judgments", "evaluation"):
        assert first.results[key] == second.results[key]
    assert first.results["dataset"]["content_hash"] == second.results["dataset"]["content_hash"]
    weights = [
        StableDiffusionPipeline.from_pretrained(r.results["checkpoint"]["path"]).unet.state_dict()
        for r in (first, second)
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # In the same home the same candidates exist already: the round says so instead of training on nothing.
    store = Store.open(tmp_path / "a")
    with pytest.raises(RoundError, match="drew no new pair"):
        run_round(store, config)
    assert get_round(store, 2).status == "failed"


def test_a_round_from_a_lora_model_trains_on_it_fused(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    config = RoundConfig.from_dict({**TINY, "num_prompts": 2, "per_prompt": 4, "eval_prompts": 2})
    first = run_round(store, config)
    with store.write() as con:  # what `workbench train dpo` registers: the LoRA folder on the base
        lora = register_model(con, "dpo-lora", first.results["training"]["final"], kind="lora", parent_id=1)
    second = run_round(store, config, lora)
    fused = second.results["training"]["config"]["pretrained_model"]
    assert fused == str(store.models_dir / f"fused-{lora}")
    # The LoRA fused into the base is the checkpoint round 1 registered.
    ours = StableDiffusionPipeline.from_pretrained(fused).unet.state_dict()
    theirs = StableDiffusionPipeline.from_pretrained(first.results["checkpoint"]["path"]).unet.state_dict()
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in theirs)
    with store.read() as con:
        assert [m["name"] for m in model_lineage(con, second.model_id)] == ["round-2", "dpo-lora", "toy"]


def add_held_out_human_pairs(store: Store, outcomes: list[str], annotator: str = "cy") -> list[int]:
    """Toy-model pairs on held-out captions (one per outcome), judged by a person."""
    captions = list(held_out_captions()[: len(outcomes)])
    cfg = GenerationConfig(per_prompt=2, num_inference_steps=4, seed=99)
    generate_pairs(
        store, load_pipeline(TOY_MODEL_DIR, dtype=torch.float32), "toy", captions, cfg, progress=False
    )
    with store.write() as con:
        pairs = [
            r[0]
            for r in con.execute(
                "SELECT p.id FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id WHERE list_contains(?, pr.text) "
                "ORDER BY p.id",
                [captions],
            ).fetchall()
        ]
        person = ensure_annotator(con, annotator)
        judgments = [
            NewJudgment(pair_id=p, annotator_id=person, source="app", outcome=o)
            for p, o in zip(pairs, outcomes, strict=True)
        ]
        insert_judgments(con, judgments)
    return pairs


def test_held_out_human_accuracy_is_a_half_for_the_same_model_and_flips_with_the_votes(
    demo, tmp_path: Path
) -> None:
    home, _ = demo
    tuned = get_round(Store.open(home), 1).results["checkpoint"]["path"]
    store = Store.open(tmp_path / "home")
    config = RoundConfig(human_eval_pairs=3)
    assert held_out_human_accuracy(store, tuned, str(TOY_MODEL_DIR), config, seed=0) == {"pairs": 0}
    pairs = add_held_out_human_pairs(store, ["a", "b", "a", "tie"])
    # Identical models: every DPO margin is exactly 0, which counts half.
    same = held_out_human_accuracy(store, tuned, tuned, config, seed=0)
    assert same == {"pairs": 3, "draws": 12, "accuracy": 0.5}  # the tie is not a held-out decision
    before = held_out_human_accuracy(store, tuned, str(TOY_MODEL_DIR), config, seed=0)
    # Two more people reverse every decided vote; the same draws then agree exactly when they disagreed.
    with store.write() as con:
        for name in ("dee", "eve"):
            person = ensure_annotator(con, name)
            flipped = [
                NewJudgment(pair_id=p, annotator_id=person, source="app", outcome={"a": "b", "b": "a"}[o])
                for p, o in zip(pairs[:3], ["a", "b", "a"], strict=True)
            ]
            insert_judgments(con, flipped)
    after = held_out_human_accuracy(store, tuned, str(TOY_MODEL_DIR), config, seed=0)
    assert after["accuracy"] == pytest.approx(1 - before["accuracy"])


def test_a_repeated_demo_draws_new_candidates(tmp_path: Path) -> None:
    args = ["--home", str(tmp_path / "home"), *DEMO_ARGS[:1], "--rounds", "1", *DEMO_ARGS[3:]]
    outputs = [CliRunner().invoke(app, args) for _ in range(2)]
    assert [r.exit_code for r in outputs] == [0, 0], outputs[-1].output
    assert "1 rounds, seed 0" in outputs[0].output and "1 rounds, seed 1" in outputs[1].output
    seeds = [r.results["generation"]["seed"] for r in list_rounds(Store.open(tmp_path / "home"))]
    assert seeds == [1, 2]  # base seed + depth 1 from the base model


def test_a_round_can_count_only_step_judgments_made_on_completion_previews(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    config = RoundConfig.from_dict({**TINY, "curation": {"step_judgments": "completion"}})
    assert round_curation(config, 1, store).filters.step_judgments == "completion"
    assert round_curation(RoundConfig.from_dict(TINY), 1, store).filters.step_judgments == "all"
    run_command = typer.main.get_command(app).commands["round"].commands["run"]
    assert "--step-judgments" in {flag for param in run_command.params for flag in param.opts}
