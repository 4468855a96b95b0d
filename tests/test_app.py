"""The Streamlit app, headless through AppTest, on a real store."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from datastore.datasets import create_dataset_version
from datastore.formats import import_pickapic
from datastore.store import Store

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_overview_shows_the_store(tmp_path: Path, monkeypatch, pickapic_file: Path) -> None:
    home = tmp_path / "home"
    store = Store.open(home)
    import_pickapic(store, pickapic_file, show_progress=False)
    version = create_dataset_version(store, "shown")
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pairs"] == "12" and metrics["Judgments"] == "12" and metrics["Images"] == "24"
    assert version.id in at.dataframe[0].value["id"].to_list()
