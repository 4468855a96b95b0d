# Two commands: `make run` and `make test`. Both set up .venv first (torch before the rest,
# so no multi-GB CUDA build is pulled in on a CPU machine).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
HOME_DIR ?= $(if $(WORKBENCH_HOME),$(WORKBENCH_HOME),$(HOME)/.workbench)
PYTEST_ARGS ?=
# 127.0.0.1 serves this machine only; any other address (0.0.0.0) makes everyone sign in.
ADDRESS ?= 127.0.0.1
# The Label Studio server has its own virtualenv: its pins clash with ours.
LS_VENV := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed
LABEL_STUDIO_SPEC ?= label-studio==1.23.2

.PHONY: setup labelstudio-env browser run test test-gpu lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

$(LS_STAMP):
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q "$(LABEL_STUDIO_SPEC)"
	touch $(LS_STAMP)

labelstudio-env: $(LS_STAMP)

# The browser tests drive Debian's chromium through playwright (never `playwright install`).
browser:
	@command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

run: setup
	$(BIN)/workbench --home "$(HOME_DIR)" init
	$(BIN)/workbench --home "$(HOME_DIR)" seed
	$(BIN)/workbench --home "$(HOME_DIR)" app --address "$(ADDRESS)"

lint: setup
	$(BIN)/ruff check .

test: setup lint labelstudio-env browser
	$(BIN)/pytest $(PYTEST_ARGS)

test-gpu: setup
	$(BIN)/pytest -m gpu $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache .ruff_cache
