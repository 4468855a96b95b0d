"""Noisy steps in a real browser: completion previews shown, and what was judged recorded."""

from __future__ import annotations

from pathlib import Path

from labeling_data import add_shapes_pairs
from test_annotate_browser import (
    chromium,
    free_port,
    judge_log,
    open_widget,
    serving,
    wait_saved,
)

from datastore.store import Store
from workbench.cli.label import streamlit_command
from workbench.generation import generate_step_pools
from workbench.generation_config import GenerationConfig
from workbench.pipelines import load_pipeline
from workbench.toy import TOY_MODEL_DIR


def test_each_step_judgment_records_whether_it_was_made_on_completion_previews(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    cfg = GenerationConfig(num_inference_steps=4, pool_k=3, pool_steps=(2,), seed=3, batch_size=4, previews="completion")
    generate_step_pools(store, load_pipeline(TOY_MODEL_DIR), "toy", ["a blue square in the center"], cfg, progress=False)
    (bare,) = add_shapes_pairs(store, 1, kind="step")
    port = free_port()
    with serving(streamlit_command("127.0.0.1", port), store.home, port) as url, chromium() as browser:
        page, frame = open_widget(browser, url, "noa", page_path="noisy_steps")
        shown = {}
        for key in "1234":
            pair = frame.evaluate("() => Number(document.getElementById('root').dataset.pair)")
            shown[pair] = frame.evaluate("() => [...document.querySelectorAll('#pair .views figcaption')].map(c => c.textContent)")
            page.keyboard.press(key)
            frame.wait_for_function(f"() => document.getElementById('root').dataset.pair !== '{pair}'")
        wait_saved(frame)
        log = judge_log(frame)
    completion = ["finished image this continuation leads to", "predicted x0 at this step"] * 2
    assert shown == {p: ["predicted x0 at this step (no completion preview)"] * 2 if p == bare.pair_id else completion for p in shown}
    assert len(shown) == 4 and [e["pair"] for e in log] == list(shown)
    with store.read() as con:
        previews = dict(con.execute("SELECT pair_id, preview FROM judgments").fetchall())
    assert previews == {p: None if p == bare.pair_id else "completion" for p in shown}
