# Set-up and checks for a fresh clone. Needs python3 (3.10+) on PATH; nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The CPU build here; on a GPU machine install your torch build first, or: make TORCH=torch
TORCH ?= torch==2.13.0

.PHONY: quickstart test lint format bench clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) contrib/tune-plugin-example/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, so no later requirement pulls a CUDA build.
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[test]" $(foreach p,$(wildcard plugins/*/pyproject.toml),-e $(dir $(p))) -e contrib/tune-plugin-example
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/tune run recipes/quickstart.toml --overwrite

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
