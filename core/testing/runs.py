"""Recipes, plugin managers and runs for tests: the in-process and subprocess ways in."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHAT_DATA = Path(__file__).parent.parent / "assets" / "testing" / "chat.jsonl"

# Plugin objects registered for one test (`tune_plugin`, `registered`): every plugin manager
# the helpers here build includes them.
_REGISTERED: list[tuple[str, Any]] = []


def plugin_manager(extra_modules: tuple[str, ...] | list[str] = ()) -> Any:
    """The plugin manager a run would use, plus the plugin objects registered for this test."""
    from tune.registry.manager import get_plugin_manager

    return get_plugin_manager(extra_modules=extra_modules, plugins=list(_REGISTERED))


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
    return update_tables(base, sections)


def update_tables(base: dict[str, Any], tables: dict[str, Any]) -> dict[str, Any]:
    """`base` with each of `tables` applied: a table's keys update the table of that name, a list
    or scalar replaces it. Returns `base`, updated in place."""
    for name, values in tables.items():
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
    from tune.model.checks import validate_model

    validate_model(recipe)
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
