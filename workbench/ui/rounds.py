"""Rounds: the timeline of closed rounds, rounds waiting for people, their metrics, a before/after
grid, and a launch form (judged by an AI scorer, people, or both)."""

from dataclasses import replace

import polars as pl
import streamlit as st

from reward_models.spec import SPEC_HELP
from workbench.jobs import JobError, list_jobs
from workbench.rounds.config import DEMO, DPO_DEFAULTS, RoundConfig, demo_config
from workbench.rounds.driver import continue_round, launch_round
from workbench.rounds.errors import RoundError
from workbench.rounds.evaluate import evaluation_prompts, grid_images
from workbench.rounds.reading import human_needs, list_rounds, rounds_table, training_metrics
from workbench.ui.state import require_admin, store

require_admin()
st.title("Rounds")
summaries = list_rounds(store())

st.subheader("Timeline")
if summaries:
    table = rounds_table(summaries).with_columns(
        pl.format("{} -> {}", "parent", pl.col("model").cast(pl.String).fill_null("?")).alias(
            "parent -> model"
        )
    )
    versions = {s.id: s.dataset_version for s in summaries}
    table = table.with_columns(
        pl.col("round").replace_strict(versions, default=None).alias("dataset version")
    )
    st.dataframe(
        table.select("round", "status", "parent -> model", "dataset version", "pairs", "judgments",
                     "dataset_pairs", "train_s", "win_vs_parent", "win_vs_base", "score", "human_accuracy"),
        hide_index=True, width="stretch",
    )  # fmt: skip
    finished = table.filter(pl.col("win_vs_parent").is_not_null())
    if finished.height:
        st.caption("Oracle win rate of each round's model against its parent and against the base model")
        st.line_chart(finished.select("round", "win_vs_parent", "win_vs_base"), x="round")
    for s in summaries:
        if s.status == "failed":
            st.warning(f"Round {s.id} failed: {s.error}")
else:
    st.info("No rounds yet: run `workbench round run` or `workbench demo`, or launch one below.")

waiting = [s for s in summaries if s.status == "awaiting_judgments"]
if waiting:
    st.subheader("Waiting for people")
for s in waiting:
    needs = human_needs(store(), s.id)
    judges = "people and the AI scorer" if needs.feedback == "both" else "people"
    if needs.missing:
        st.warning(
            f"Round {s.id} (judged by {judges}) needs **{needs.missing}** more human judgments on "
            f"**{needs.pairs}** pairs ({needs.per_pair} per pair): judge them on Annotate / Noisy steps. "
            "The round names no annotators: anyone who has not judged a pair yet can give its judgments."
        )
    else:
        st.success(f"Round {s.id} has every human judgment it needs ({needs.per_pair} per pair).")
    if needs.by_annotator or needs.ai:
        st.dataframe(needs.given_table(), hide_index=True, key=f"given_{s.id}")
    if needs.feedback == "both":
        st.caption(
            f"The AI scorer judges each pair once: {needs.ai_pairs} of the round's {needs.round_pairs} pairs "
            "so far, any others when the round continues."
        )
    if needs.short:
        st.caption("Pairs still short of human judgments")
        st.dataframe(needs.short_table(), hide_index=True, key=f"short_{s.id}")
    if st.button(
        f"Continue round {s.id} (curate, train, evaluate)", key=f"continue_{s.id}", disabled=bool(needs.missing)
    ):
        try:
            job = continue_round(store(), s.id)
            st.success(f"Continuing in job {job.id}; `workbench jobs show {job.id}` follows it.")
        except (JobError, RoundError) as e:
            st.error(str(e))

if summaries:
    st.subheader("Round metrics")
    chosen = st.selectbox("Round", [s.id for s in summaries], index=len(summaries) - 1, key="round_metrics")
    metrics = training_metrics(next(s for s in summaries if s.id == chosen))
    if metrics.is_empty():
        st.caption("This round has not trained yet.")
    else:
        left, right = st.columns(2)
        left.caption("Training loss")
        left.line_chart(metrics.select("step", "loss"), x="step")
        accuracy = [c for c in ("implicit_accuracy", "pairs_kept") if c in metrics.columns]
        right.caption("Implicit accuracy" if accuracy[:1] == ["implicit_accuracy"] else "Pairs kept per step")
        right.line_chart(metrics.select("step", *accuracy[:1]), x="step")

models = [(s.parent_model_id, f"model {s.parent_model_id} (before)") for s in summaries[:1]]
models += [(s.model_id, f"round {s.id} (model {s.model_id})") for s in summaries if s.model_id is not None]
if len(models) > 1:
    st.subheader("Before and after")
    n = st.number_input("Held-out captions", min_value=1, max_value=12, value=4, key="grid_prompts")
    seed = st.number_input("Seed", min_value=0, value=0, key="grid_seed")
    if st.button("Draw the grid", key="grid_draw"):
        st.session_state["grid"] = (int(n), int(seed))
    if "grid" in st.session_state:
        n, seed = st.session_state["grid"]
        prompts = evaluation_prompts(RoundConfig(eval_prompts=int(n)))
        with st.spinner("Drawing (once per model, then cached)"):
            grid = grid_images(store(), [m for m, _ in models], prompts, seed=seed)
        for prompt_index, prompt in enumerate(prompts):
            st.caption(prompt)
            for col, (model_id, label) in zip(st.columns(len(models)), models, strict=True):
                col.image(str(grid[model_id][prompt_index]), caption=label, width=96)

st.subheader("Launch")
JUDGES = {"ai": "an AI scorer", "human": "people", "both": "people and an AI scorer"}
RECIPES = {
    "dpo": "Diffusion-DPO on the round's judged final pairs",
    "spo": "SPO online, the AI scorer judging each step",
    "spm-spo": "step-aware preference model from the round's judgments, then SPO with it",
}
with st.form("launch_round"):
    feedback = st.selectbox("Judged by", list(JUDGES), format_func=JUDGES.get, key="launch_feedback")
    scorer = st.text_input(
        "AI judge / scorer", DEMO.scorer, key="launch_scorer", help=f"A scorer spec: {SPEC_HELP}."
    )
    per_pair = st.number_input("Human judgments per pair (people)", 1, 10, 1, key="launch_per_pair")
    recipe = st.selectbox(
        "Recipe", list(RECIPES), format_func=lambda r: f"{r}: {RECIPES[r]}", key="launch_recipe"
    )
    n_rounds = st.number_input("Rounds (AI scorer only: each from the last one's model)", 1, 10, 1)
    num_prompts = st.number_input("Prompts per round", 1, 432, DEMO.num_prompts)
    train_steps = st.number_input("Training steps per round", 1, 5000, DPO_DEFAULTS["max_steps"])
    parent = st.selectbox(
        "Parent",
        [m for m, _ in models[-1:]] + [None],
        format_func=lambda m: "base model" if m is None else f"model {m}",
    )
    if st.form_submit_button("Launch in the background"):
        config = demo_config(prompts=int(num_prompts), train_steps=int(train_steps))
        # Every training stage of the recipe gets the step count.
        spo_training = dict(config.training) if recipe == "spm-spo" else {}
        if feedback != "ai" and n_rounds > 1:
            st.error("A round judged by people waits for them: launch one at a time.")
        elif not scorer.strip():
            st.error(f"Name the AI judge / scorer: {SPEC_HELP}.")
        else:
            try:
                config = replace(
                    config,
                    feedback=feedback,
                    scorer=scorer.strip(),
                    human_judgments_per_pair=int(per_pair),
                    recipe=recipe,
                    spo_training=spo_training,
                )
                job = launch_round(store(), config, parent, int(n_rounds))
                st.success(f"Launched job {job.id}; `workbench jobs show {job.id}` follows it.")
                if feedback != "ai":
                    st.info("Once its pairs are drawn the round waits for people: its count shows above.")
            except (JobError, RoundError) as e:
                st.error(str(e))
jobs = list_jobs(store(), kind="round")
if jobs:
    st.dataframe(
        pl.DataFrame(
            [{"job": j.id, "status": j.status, "started": j.started_at, "error": j.error} for j in jobs]
        ),
        hide_index=True,
    )
