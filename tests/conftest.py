"""Shared fixtures: a temporary store and a Pick-a-Pic-format file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pickapic_data import pickapic_rows, write_parquet

from datastore.store import Store
from workbench.threads import torch_threads

# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "home")


@pytest.fixture
def pickapic_file(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "pickapic.parquet", pickapic_rows(12))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: on a busy 2-core machine two threads wait on each other
    and sampling runs up to 25x slower."""
    with torch_threads(1):
        yield
