"""tune.testing: a pytest plugin for testing tune plugins with real, tiny runs.

Opt in, as with pytest's own pytester: `pytest -p tune.testing`, or in the test suite's root
`conftest.py`: `pytest_plugins = ["tune.testing"]` (`tune plugins new` writes that line). Once
on, tune's cache (tiny models, tokenized data) points at a temporary folder for the session, so
tests never touch `~/.cache/tune`, and `gpu`-marked tests skip without a CUDA GPU.

Fixtures:
    tune_plugin(obj, name=None)   register a plugin object (module, class instance) for one
                                  test: in-process runs and plugin managers of that test see it
    make_recipe(**sections)       a small recipe (tiny Llama, chat data, 4 steps) in tmp_path;
                                  returns its path
    run_recipe(recipe, ...)       run a recipe (dict or path) in-process; (summary, Recipe)

Helpers (plain functions): `chat_rows`, `write_jsonl`, `recipe_dict`, `write_recipe`,
`load_recipe`, `plugin_manager`, `run`, `run_cli`, `launch`, `build_model`, `tiny_model`,
`tiny_tokenizer`, `tokenize`, `train_losses`, `final_weights`, `max_weight_diff`,
`registered`, `write_plugin`, `sgd_step`, `step_difference` (strategy parity).
Markers: `slow` (seconds or more), `gpu` (skipped without a CUDA GPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHAT_DATA = Path(__file__).parent / "assets" / "testing" / "chat.jsonl"

__all__ = [
    "build_model",
    "plugin_manager",
    "chat_rows",
    "final_weights",
    "check_missing_library",
    "launch",
    "load_recipe",
    "max_weight_diff",
    "recipe_dict",
    "registered",
    "run",
    "run_cli",
    "SGD_PLUGIN",
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
# Plugin objects registered for one test (`tune_plugin`, `registered`): every plugin manager
# the helpers here build includes them.
_REGISTERED: list[tuple[str, Any]] = []


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


def plugin_manager(extra_modules: tuple[str, ...] | list[str] = ()) -> Any:
    """The plugin manager a run would use, plus the plugin objects registered for this test."""
    from tune.registry.manager import get_plugin_manager

    return get_plugin_manager(extra_modules=extra_modules, plugins=list(_REGISTERED))


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


# -- data and recipes -----------------------------------------------------------------------------
def chat_rows(n: int) -> list[dict[str, Any]]:
    """The first `n` (<= 512) of the quickstart's conversations ("reverse word" -> "drow")."""
    rows = []
    with CHAT_DATA.open(encoding="utf-8") as fh:
        for line in fh:
            if len(rows) == n:
                break
            rows.append(json.loads(line))
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_dict(tmp_path: Path, n_rows: int = 64, **sections: Any) -> dict[str, Any]:
    """A small full-fine-tune recipe (tiny Llama, chat rows, fp32, 4 steps of 4); each keyword
    is a table whose keys update the default table (a list or scalar replaces it)."""
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(n_rows))
    base: dict[str, Any] = {
        "model": {"path": "tune:tiny-llama", "max_seq_len": 64},
        "data": {"format": "chat", "train": str(train), "template": "llama-3.1"},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "scheduler": {"name": "constant"},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 4,
            "micro_batch_size": 4,
            "precision": "fp32",
            "log_every": 1,
        },
        "eval": {"metrics": []},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(base.get(name), dict):
            base[name] = {**base[name], **values}
        else:
            base[name] = values
    return base


def write_recipe(tmp_path: Path, data: dict[str, Any], name: str = "recipe.toml") -> Path:
    from tune.recipe import dump_toml

    path = tmp_path / name
    path.write_text(dump_toml(data), encoding="utf-8")
    return path


@contextlib.contextmanager
def registered(*plugins: Any) -> Iterator[None]:
    """Within the block, these plugin objects are registered in every in-process manager."""
    added = [(getattr(p, "__name__", None) or type(p).__name__, p) for p in plugins]
    _REGISTERED.extend(added)
    try:
        yield
    finally:
        for item in added:
            _REGISTERED.remove(item)


def load_recipe(path: Path, plugins: tuple[str, ...] = (), overrides: list[str] | None = None):
    """A validated `Recipe` with its backends chosen (`plugins`: extra plugin modules, as -p)."""
    from tune.recipe import load_recipe as load

    return load(path, overrides, plugins=plugin_manager(plugins))


# -- running --------------------------------------------------------------------------------------
def run(
    path: Path,
    *,
    plugins: tuple[str, ...] = (),
    resume: bool = False,
    resume_from: Path | None = None,
    overwrite: bool = False,
    resume_changed: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Validate and train a recipe file in this process; returns (summary, Recipe)."""
    from tune.data.pipeline import validate_data
    from tune.recipe import load_recipe as load
    from tune.train.run import run_training

    pm = plugin_manager(plugins)
    recipe = load(path, plugins=pm)
    from tune.contract.context import RunContext

    validate_data(pm, RunContext(recipe=recipe, output_dir=Path(recipe.train.output_dir)))
    summary = run_training(
        recipe,
        pm,
        resume=resume or resume_from is not None,
        resume_from=resume_from,
        overwrite=overwrite,
        resume_changed=resume_changed,
    )
    return summary, recipe


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """`python -m tune ARGS` in a subprocess: the real entry point, real exit codes.

    The child sees this process's sys.path, so plugins importable here are importable there.
    """
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "tune", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=900,
    )


def write_plugin(folder: Path, name: str, source: str) -> dict[str, str]:
    """A plugin for runs in a subprocess, which `tune_plugin` cannot reach: `source` is saved as
    module `name` in `folder`; returns the `env` for `run_cli` under which `-p name` imports it."""
    import textwrap

    (Path(folder) / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join([str(folder), *(p for p in sys.path if p)])}


def check_missing_library(tmp_path: Path, module: str, plugin: str, uses: dict[str, Any]) -> None:
    """Simulate `module` uninstalled (find_spec says no, in real `tune` subprocesses) and check
    what every backend with `requires=(module,)` promises: `tune plugins list` shows `plugin`
    with a "not installed" STATUS, a recipe using it (`uses`) is refused at validation naming
    the distribution to install, and a recipe not using it still validates."""
    shim = Path(tmp_path) / f"without-{module}"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import importlib.util as u\n"
        "_find = u.find_spec\n"
        f"u.find_spec = lambda name, *a, **k: None if name == {module!r} else _find(name, *a, **k)\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(shim), *(p for p in sys.path if p)])}
    listed = run_cli("plugins", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.strip().startswith(f"{plugin} "))
    assert f"{module} not installed" in line, line
    refused = run_cli("validate", str(write_recipe(tmp_path, uses, "uses.toml")), env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"pip install tune-plugin-{plugin}" in refused.stdout + refused.stderr
    plain = write_recipe(tmp_path, recipe_dict(tmp_path), "plain.toml")
    ok = run_cli("validate", str(plain), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def launch(recipe: Path, nproc: int = 2, *extra: str, env: dict[str, str] | None = None):
    """`tune run --nproc-per-node N RECIPE EXTRA` (torchrun, gloo on CPU), as a user would."""
    multi = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    return run_cli("run", *multi, str(recipe), *extra, env=env)


# Plain SGD, for strategy tests: its update is proportional to the gradient, so any error in
# the loss normalization across ranks or micro-batches shows in the weights. With `momentum` the
# optimizer has state, so a resume must restore it.
SGD_PLUGIN = """
from tune.plugin import Settings, hookimpl


class SgdSettings(Settings):
    lr: float = 0.1
    momentum: float = 0.0


@hookimpl
def tune_provide(provide):
    provide.optimizer("sgd", SgdSettings, doc="plain SGD")


@hookimpl
def tune_build_optimizer(name, settings, params, ctx):
    import torch

    return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
"""


def sgd_step(tmp_path: Path, out: str, strategy: dict, micro: int, accum: int, nproc: int):
    """One full-fine-tune SGD step (`-p sgd_plugin`, launched with `nproc` processes) into
    tmp_path/out; compare two with `step_difference`. Returns the run directory."""
    env = write_plugin(tmp_path, "sgd_plugin", SGD_PLUGIN)
    data = recipe_dict(
        tmp_path,
        optimizer={"name": "sgd", "lr": 0.5},
        strategy=strategy,
        data={"shuffle": False},
        train={
            "output_dir": str(tmp_path / out),
            "max_steps": 1,
            "micro_batch_size": micro,
            "grad_accum": accum,
            "max_grad_norm": 0.0,
        },
    )
    res = launch(write_recipe(tmp_path, data, f"{out}.toml"), nproc, "-p", "sgd_plugin", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / out


def step_difference(a: Path, b: Path) -> tuple[float, float]:
    """(first-step loss difference, largest final-weight difference) of two runs."""
    loss = abs(train_losses(a)[0] - train_losses(b)[0])
    return loss, max_weight_diff(final_weights(a), final_weights(b))


# -- models and results ---------------------------------------------------------------------------
def tiny_model(name: str = "tiny-llama", overrides: dict | None = None, seed: int = 0) -> Path:
    """The offline tiny model `tune:<name>` written to a local folder (as from_pretrained reads)."""
    from tune.builtin.tiny import materialize

    return materialize(name, overrides or {}, seed)


def tiny_tokenizer(name: str = "tiny-llama"):
    """The byte-level tokenizer of `tune:<name>`, with that model's chat template."""
    from tune.builtin.tiny import load_tokenizer

    return load_tokenizer(name)


def build_model(recipe: Any, tmp_path: Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) as `tune run` builds them for `recipe` (from `load_recipe`): the
    loader, quantization and every adapt step, on CPU, before the strategy wraps anything."""
    from tune.contract.context import RunContext
    from tune.train.setup import build_model as build

    ctx = RunContext(recipe=recipe, output_dir=tmp_path or Path(recipe.train.output_dir))
    loaded, _ = build(plugin_manager(), recipe, ctx)
    return loaded.model, loaded.tokenizer


def tokenize(recipe: Any):
    """The recipe's data as training sees it: the core's `Examples` (recipe from `load_recipe`)."""
    from tune.contract.context import RunContext
    from tune.data.pipeline import load_examples

    pm = plugin_manager()
    ctx = RunContext(recipe=recipe, output_dir=Path(recipe.train.output_dir))
    from tune.train.setup import load_tokenizer as loader_tokenizer

    tokenizer = loader_tokenizer(pm, recipe, ctx)
    return load_examples(pm, tokenizer, ctx)


def train_losses(run_dir: Path) -> list[float]:
    """Per-step train losses from a run's metrics.jsonl."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def final_weights(run_dir: Path) -> dict[str, Any]:
    """The tensors of a run's final/ artifact (PEFT adapter or full model)."""
    from safetensors.torch import load_file

    final = Path(run_dir) / "final"
    name = "adapter_model.safetensors"
    if not (final / name).exists():
        name = "model.safetensors"
    return load_file(str(final / name))


def max_weight_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
