"""Train: launch DPO, SPO or the SPM as a background job on a dataset version, and watch it."""

from datetime import datetime

import streamlit as st

from datastore.datasets import find_dataset_version, list_dataset_versions
from training.options import ConfigError
from training.recipes import RECIPES
from workbench import jobs
from workbench.forms import config_from_form, form_fields
from workbench.toy import TOY_MODEL_DIR
from workbench.training_curves import training_curves
from workbench.ui.forms import config_widgets
from workbench.ui.state import require_admin, store


@st.fragment(run_every=2)
def jobs_panel(launched_id: int | None) -> None:
    """The chosen job's progress, charts and error, the job list, stop and resume; polled."""
    require_admin()  # a fragment's reruns skip the page's own check: a demoted admin stops here
    found = jobs.list_jobs(store())
    if launched_id is not None and not next(j for j in found if j.id == launched_id).active:
        st.rerun()  # the job this form launched has ended: let the Launch button come back
    if not found:
        st.caption("No jobs yet.")
        return
    by_id = {job.id: job for job in found}
    chosen = st.selectbox(
        "Job",
        list(by_id),
        format_func=lambda i: f"{i} · {by_id[i].kind} · {by_id[i].run_dir.name}",
        key="train_job",
    )
    job = by_id[chosen]
    progress = jobs.job_progress(job)
    st.markdown(f"**Job {job.id}** ({job.kind}): `{job.status}` · run folder `{job.run_dir}`")
    if progress is not None:
        st.progress(progress.fraction, text=f"step {progress.step} / {progress.max_steps}")
    curves = training_curves(jobs.read_metrics(job))
    for column, (title, frame) in zip(st.columns(3), curves.items(), strict=False):
        column.caption(title)
        column.line_chart(frame, x="step", height=220)
    if job.status == "failed":
        st.error(f"Job {job.id} failed")
        st.code(job.error or "", language=None)
    stop, resume, _ = st.columns([1, 1, 6])
    if stop.button("Stop", key="train_stop", disabled=not job.active):
        jobs.stop_job(store(), job.id)
        st.rerun()
    if resume.button("Resume", key="train_resume", disabled=job.status not in ("failed", "stopped")):
        jobs.resume_job(store(), job.id)
        st.rerun()
    st.dataframe(
        [
            {
                "id": j.id,
                "kind": j.kind,
                "status": j.status,
                "progress": "" if (p := jobs.job_progress(j)) is None else f"{p.step}/{p.max_steps}",
                "attempts": j.attempts,
                "started": j.started_at,
                "finished": j.finished_at,
                "run folder": str(j.run_dir),
            }
            for j in found
        ],
        hide_index=True,
        width="stretch",
    )


require_admin()
st.title("Train")
recipe = st.radio(
    "Recipe", list(RECIPES), format_func=lambda name: RECIPES[name].title, horizontal=True, key="train_recipe"
)
config_class = RECIPES[recipe].config_class
stamp = st.session_state.setdefault("train_stamp", datetime.now().strftime("%Y%m%d-%H%M%S"))
defaults = {"pretrained_model": str(TOY_MODEL_DIR), "output_dir": str(store().runs_dir / f"{recipe}-{stamp}")}

specs = form_fields(config_class)
values = {}
if any(spec.name == "dataset" for spec in specs):
    versions = list_dataset_versions(store())["id"].to_list()
    chosen = st.selectbox(
        "Dataset version",
        versions,
        key=f"{recipe}_dataset_version",
        help="Made on the Data page or by `workbench dataset create`.",
    )
    values["dataset"] = str(find_dataset_version(store(), chosen).path) if chosen else ""
with st.expander("Hyperparameters", expanded=True):
    values |= config_widgets(st, [s for s in specs if s.name != "dataset"], defaults, recipe)
accelerate_config = st.text_input(
    "Accelerate config file",
    key="train_accelerate_config",
    help="From `accelerate config`: one GPU, several GPUs or nodes. Empty: one process on the first GPU, or the CPU.",
)

try:
    cfg, problem = config_from_form(config_class, values), None
except ConfigError as e:
    cfg, problem = None, str(e)
running = None if cfg is None else jobs.find_active_job(store(), jobs.training_key(recipe, cfg))
if problem:
    st.warning(problem)
elif running:
    st.info(f"Job {running.id} is training this config; change the run folder to launch another.")
if st.button("Launch", type="primary", key="train_launch", disabled=cfg is None or running is not None):
    try:
        job = jobs.launch_training(store(), recipe, cfg, accelerate_config=accelerate_config.strip() or None)
    except jobs.JobError as e:
        st.error(str(e))
    else:
        st.session_state["train_job"] = job.id
        st.rerun()

st.subheader("Jobs")
jobs_panel(running.id if running else None)
