# Every target sets up what it needs: a .venv with the pinned dependencies (skipped when
# requirements.lock and pyproject.toml have not changed since the last install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DS_ACCELERATOR ?= cpu
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-all lint bench clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The whole pipeline on the embedded default: tiny models, synthetic tasks, CPU, minutes.
demo: install
	$(BIN)/distillm pipeline run_dir=runs/demo overwrite=true

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check distillm_cli tests scripts

clean:
	rm -rf runs outputs multirun bench .pytest_cache
