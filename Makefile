# Two commands: `make run` and `make test`. Both set up .venv first (torch before the rest,
# so no multi-GB CUDA build is pulled in on a CPU machine).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
HOME_DIR ?= $(if $(WORKBENCH_HOME),$(WORKBENCH_HOME),$(HOME)/.workbench)
PYTEST_ARGS ?=

.PHONY: setup run test test-gpu lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/workbench --home "$(HOME_DIR)" init
	$(BIN)/workbench --home "$(HOME_DIR)" seed
	WORKBENCH_HOME="$(HOME_DIR)" $(BIN)/streamlit run app.py --server.address 127.0.0.1 --server.headless true --browser.gatherUsageStats false

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-gpu: setup
	$(BIN)/pytest -m gpu $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
