"""The Train page in a real browser: launch a tiny DPO job and watch it finish with its charts."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import sync_playwright
from test_annotate_browser import CHROMIUM_ARGS, free_port, serving
from tiny_models import build_tiny_sd15

from datastore.datasets import create_dataset_version
from datastore.formats import import_pickapic
from datastore.store import Store
from workbench import jobs
from workbench.cli.label import streamlit_command

# The job's status once the page has drawn its three charts (loss, implicit accuracy, reference divergence).
FINISHED_JS = """() => {
    if (document.querySelector('[data-stale="true"]')) return null;
    const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
    const drawn = charts.filter(c => c.querySelector('canvas, svg'));
    const status = [...document.querySelectorAll('code')].map(c => c.textContent).find(t => t === 'finished');
    return drawn.length === 3 && status ? drawn.length : null;
}"""


def test_launch_a_tiny_dpo_job_from_the_train_page_and_see_it_finish(
    tmp_path: Path, pickapic_file: Path
) -> None:
    store = Store.open(tmp_path / "home")
    import_pickapic(store, pickapic_file, show_progress=False)
    version = create_dataset_version(store, "prefs")
    model = build_tiny_sd15(tmp_path / "sd15")
    port = free_port()
    with serving(streamlit_command("127.0.0.1", port), store.home, port) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(180_000)  # a busy machine can take long to load the page and train
        page.goto(f"{url}/train")
        page.get_by_text("No jobs yet.").wait_for()
        for label, value in (
            ("pretrained_model", str(model)),
            ("max_steps", "3"),
            ("resolution", "16"),
            ("batch_size", "2"),
        ):
            field = page.get_by_label(label, exact=True)
            field.fill(value)
            field.press("Enter")
            page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')")
        launch = page.get_by_role("button", name="Launch")
        launch.click()
        assert page.wait_for_function(FINISHED_JS).json_value() == 3
        assert "step 3 / 3" in page.get_by_test_id("stProgress").inner_text()
        assert launch.is_enabled()  # the job has ended: the same config may run again
        browser.close()
    [job] = jobs.list_jobs(store)
    assert (job.kind, job.status, job.config["dataset"]) == ("dpo", "finished", str(version.path))
    assert [m["step"] for m in jobs.read_metrics(job)] == [1, 2, 3]
