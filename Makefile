# The two set-up commands of the README. Both create .venv if missing and install medvl with
# torch pinned in the same pip command (without the pin pip pulls a multi-GB CUDA build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: quickstart test lint venv clean

$(STAMP): pyproject.toml
	bash scripts/system-deps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' torch==2.13.0
	touch $(STAMP)

venv: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/medvl quickstart --kind 2d --out runs/quickstart

# style and types first: they take seconds and a failure there needs no 10-minute test run
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf runs .pytest_cache
