# Set-up and checks for a fresh clone. Needs python3 (3.10+) on PATH; nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The CPU build here; on a GPU machine install your torch build first, or: make TORCH=torch
TORCH ?= torch==2.13.0

ALL_PLUGINS := $(notdir $(patsubst %/,%,$(dir $(wildcard plugins/*/pyproject.toml))))
# Plugins with heavy dependencies (trackers, harnesses, TRL): `make test` installs them,
# `make quickstart` does not.
HEAVY_PLUGINS := $(filter lm-eval mlflow wandb tensorboard rouge preference,$(ALL_PLUGINS))
# Every other bundled plugin but unsloth, whose dependency pins conflict with the others.
GENERAL_PLUGINS := $(filter-out unsloth $(HEAVY_PLUGINS),$(ALL_PLUGINS))
TEST_STAMP := $(VENV)/.installed-test
# llama.cpp, for the GGUF plugin's k-quants and `--verify`: llama-cpp-python comes from the index
# as source only and compiles llama.cpp (11 min on 2 cores here). `make test` builds the wheel
# once, for this CPU (native build: the cache folder is keyed by the CPU's flags), and reuses it.
LLAMA_CPP := llama-cpp-python==0.3.36
WHEELS ?= $(HOME)/.cache/tune-wheels/$(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-12)
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: quickstart test test-unsloth lint format clean llama-cpp

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) contrib/tune-plugin-example/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, so no later requirement pulls a CUDA build.
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[test]" $(foreach p,$(GENERAL_PLUGINS),-e plugins/$(p)) -e contrib/tune-plugin-example
	# Unsloth pins its own transformers: its plugin comes without the extra here (see test-unsloth).
	$(PIP) install -q --no-deps -e plugins/unsloth
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(if $(HEAVY_PLUGINS),$(PIP) install -q $(foreach p,$(HEAVY_PLUGINS),-e "plugins/$(p)[test]"))
	$(MAKE) llama-cpp
	touch $(TEST_STAMP)

# The GGUF plugin's llama.cpp extra, from the cached wheel (built here the first time).
llama-cpp: $(STAMP)
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) wheel -q --no-deps -w $(WHEELS) "$(LLAMA_CPP)"
	$(PIP) install -q --find-links $(WHEELS) -e "plugins/gguf[llama]"

quickstart: $(STAMP)
	$(VENV)/bin/tune run recipes/quickstart.toml --overwrite

test: $(TEST_STAMP)
	$(PY) -m pytest -n 2 -q

# Unsloth in its own environment (it pins its own torch, transformers and trl): built once, then
# its tests run for real, on its CPU backend here (the gpu-marked ones skip without a GPU).
test-unsloth:
	PYTHON=$(PYTHON) bash plugins/unsloth/install-venv.sh .venv-unsloth
	.venv-unsloth/bin/python -m pytest -q -p no:randomly plugins/unsloth/tests

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-unsloth runs .pytest_cache
