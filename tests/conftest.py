"""Shared fixtures: a private model cache, tiny data files and recipe writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Two xdist workers on two cores, some starting 2-process runs: one thread per process avoids
# oversubscription (set before torch is imported; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
QUICKSTART_DATA = REPO / "recipes" / "data" / "reverse-words.jsonl"


def pytest_collection_modifyitems(config, items):
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
def _tune_cache(tmp_path_factory):
    """Tiny models are materialized once per test worker, never in the user's cache."""
    os.environ["TUNE_CACHE"] = str(tmp_path_factory.mktemp("tune-cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield


def chat_rows(n: int) -> list[dict[str, Any]]:
    rows = []
    with QUICKSTART_DATA.open() as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_dict(tmp_path: Path, n_rows: int = 64, **sections: dict[str, Any]) -> dict[str, Any]:
    """A small full-fine-tune recipe over the quickstart data; sections override keys."""
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


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Run `python -m tune ...` in a subprocess (the real entry point, real exit codes)."""
    # The child sees the same sys.path (tests put fake plugin distributions on it).
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
        cwd=cwd or REPO,
        timeout=900,
    )


@pytest.fixture
def train_recipe(tmp_path):
    """Build, validate and run a recipe in-process; returns (summary, recipe)."""
    from tune.plugins import get_plugin_manager
    from tune.recipe import load_recipe
    from tune.train.run import run_training

    def _run(
        data: dict[str, Any], *, plugins=(), resume=False, overwrite=False, name="recipe.toml"
    ):
        path = write_recipe(tmp_path, data, name)
        pm = get_plugin_manager(extra_modules=plugins)
        recipe = load_recipe(path, plugins=pm)
        return run_training(recipe, pm, resume=resume, overwrite=overwrite), recipe

    return _run


def run_resumed(recipe_path: Path, checkpoint: Path) -> dict[str, Any]:
    """Run a recipe file in-process, continuing from `checkpoint` (as --resume-from)."""
    from tune.plugins import get_plugin_manager
    from tune.recipe import load_recipe
    from tune.train.run import run_training

    pm = get_plugin_manager()
    return run_training(
        load_recipe(recipe_path, plugins=pm), pm, resume=True, resume_from=checkpoint
    )


def final_weights(run_dir: Path) -> dict[str, Any]:
    """The tensors of a run's final/ artifact (PEFT adapter or full model)."""
    from safetensors.torch import load_file

    final = run_dir / "final"
    name = (
        "adapter_model.safetensors"
        if (final / "adapter_model.safetensors").exists()
        else "model.safetensors"
    )
    return load_file(str(final / name))


def max_weight_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
