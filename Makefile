# `make run` and `make test` are the whole set-up on a fresh machine: each builds .venv first.
# `make test PYTHON=python3.13` runs on another interpreter, in a virtualenv of its own
# (.venv-3.13), so it never runs in the default .venv built by another Python. VENV=… overrides.
PYTHON ?= python3
ifeq ($(origin PYTHON),file)
VENV ?= .venv
else
VENV ?= .venv-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format clean bench

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: no interpreter PYTHON=$(PYTHON)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) run.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf .venv .venv-* state .pytest_cache

# Performance, side by side with the aiohttp ceiling: writes docs/performance.{md,json}.
bench: $(STAMP)
	$(PY) -m tests.benchmark.bench
