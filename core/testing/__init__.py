"""tune.testing: a pytest plugin for testing tune plugins with real, tiny runs.

Opt in, as with pytest's own pytester: `addopts = "-p tune.testing"` under
`[tool.pytest.ini_options]` (what `tune plugins new` writes into a plugin's pyproject.toml),
`pytest_plugins = ["tune.testing"]` in the test suite's root `conftest.py`, or
`pytest -p tune.testing`. Once
on, tune's cache (tiny models, tokenized data) points at a temporary folder for the session, so
tests never touch `~/.cache/tune`, and `gpu`-marked tests skip without a CUDA GPU.

Fixtures:
    tune_plugin(obj, name=None)   register a plugin object (module, class instance) for one
                                  test: in-process runs and plugin managers of that test see it
    make_recipe(**sections)       a small recipe (tiny Llama, chat data, 4 steps) in tmp_path;
                                  returns its path
    run_recipe(recipe, ...)       run a recipe (dict or path) in-process; (summary, Recipe)
    probe                         the `probe` metric registered: `.logits` of each eval on
                                  PROBE_IDS, to compare a trained model with its reloads

Helpers (plain functions): `chat_rows`, `write_jsonl`, `recipe_dict`, `update_tables`,
`write_recipe`, `load_recipe`, `plugin_manager`, `run`, `run_cli`, `launch`, `build_model`,
`tiny_model`, `tiny_tokenizer`, `save_random_llama` (with `SMOLLM2_135M`, a realistic shape),
`tokenize`, `train_losses`, `final_weights`, `max_weight_diff`, `registered`, `write_plugin`, `check_missing_library`; strategy parity: `launch`,
`SGD_PLUGIN`, `sgd_step`, `step_difference`; the probe metric: `Probe`, `PROBE_IDS`;
`VERIFY_CONVERSATIONS`: the conversations `tune verify` renders through the chat template.
Markers: `slow` (seconds or more), `gpu` (skipped without a CUDA GPU).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tune.testing.attacks import CodeRunningPickle, refusal_paragraph, rewrite_manifest
from tune.testing.models import (
    SMOLLM2_135M,
    build_model,
    final_weights,
    max_weight_diff,
    save_random_llama,
    tiny_model,
    tiny_tokenizer,
    tokenize,
    train_losses,
)
from tune.testing.parity import PROBE_IDS, SGD_PLUGIN, Probe, launch, sgd_step, step_difference
from tune.testing.runs import (
    _REGISTERED,
    chat_rows,
    check_missing_library,
    load_recipe,
    plugin_manager,
    recipe_dict,
    registered,
    run,
    run_cli,
    update_tables,
    write_jsonl,
    write_plugin,
    write_recipe,
)
from tune.trained.verify import CONVERSATIONS as VERIFY_CONVERSATIONS

__all__ = [
    "SMOLLM2_135M",
    "save_random_llama",
    "VERIFY_CONVERSATIONS",
    "CodeRunningPickle",
    "PROBE_IDS",
    "Probe",
    "SGD_PLUGIN",
    "build_model",
    "chat_rows",
    "check_missing_library",
    "final_weights",
    "launch",
    "load_recipe",
    "max_weight_diff",
    "plugin_manager",
    "recipe_dict",
    "update_tables",
    "refusal_paragraph",
    "registered",
    "run",
    "run_cli",
    "rewrite_manifest",
    "sgd_step",
    "step_difference",
    "tiny_model",
    "tiny_tokenizer",
    "tokenize",
    "train_losses",
    "write_jsonl",
    "write_plugin",
    "write_recipe",
]


# -- pytest hooks ---------------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Several workers on few cores, some starting 2-process runs: one thread per process
        # avoids oversubscription (before torch is imported; subprocesses inherit it).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip cleanly where no CUDA device is visible (torch is asked only if needed)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _tune_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tiny models and tokenized data go to a session folder, never the user's cache."""
    previous = os.environ.get("TUNE_CACHE")
    os.environ["TUNE_CACHE"] = str(tmp_path_factory.mktemp("tune-cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield
    if previous is None:
        os.environ.pop("TUNE_CACHE", None)
    else:
        os.environ["TUNE_CACHE"] = previous


# -- fixtures -------------------------------------------------------------------------------------
# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def tune_plugin():
    """`tune_plugin(obj, name=None)`: obj is a plugin for the rest of this test, in every
    plugin manager `tune.testing` builds (`plugin_manager()`, `run`, `run_recipe`, ...)."""
    added: list[tuple[str, Any]] = []

    def register(plugin: Any, name: str | None = None) -> str:
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        _REGISTERED.append((name, plugin))
        added.append((name, plugin))
        return name

    yield register
    for item in added:
        _REGISTERED.remove(item)


@pytest.fixture
def make_recipe(tmp_path: Path):
    """`make_recipe(name="recipe.toml", n_rows=64, **sections)`: a recipe file in tmp_path."""

    def make(name: str = "recipe.toml", n_rows: int = 64, **sections: Any) -> Path:
        return write_recipe(tmp_path, recipe_dict(tmp_path, n_rows, **sections), name)

    return make


@pytest.fixture
def run_recipe(tmp_path: Path):
    """`run_recipe(recipe, plugins=(), resume=False, overwrite=False)`: train in-process.

    `recipe` is a dict (written to tmp_path first) or a path. Returns (summary, Recipe).
    """

    def _run(recipe: dict | Path, *, name: str = "recipe.toml", **kwargs: Any):
        path = write_recipe(tmp_path, recipe, name) if isinstance(recipe, dict) else Path(recipe)
        return run(path, **kwargs)

    return _run


@pytest.fixture
def probe(tune_plugin) -> Probe:
    """The `probe` metric (`tune.testing.Probe`), registered for this test's in-process runs."""
    plugin = Probe()
    tune_plugin(plugin, "probe")
    return plugin
