"""Helpers for the real 2-process tests (gloo on CPU): recipes, launching, reading results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tune.testing import final_weights as weights  # noqa: F401 (re-exported for tests)
from tune.testing import max_weight_diff as max_diff  # noqa: F401
from tune.testing import recipe_dict, run_cli, write_recipe


def dist_recipe(
    tmp_path: Path, out: str, strategy: dict[str, Any], lora: bool = True, **train
) -> Path:
    data = recipe_dict(
        tmp_path,
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}] if lora else [],
        optimizer={"lr": 5e-3},
        strategy=strategy,
        train={"output_dir": str(tmp_path / out), "max_steps": 4, **train},
    )
    return write_recipe(tmp_path, data, f"{out}.toml")


def launch(recipe: Path, nproc: int = 2, *extra: str):
    args = ["run", str(recipe), *extra]
    if nproc > 1:
        args = ["run", "--nproc-per-node", str(nproc), str(recipe), *extra]
    return run_cli(*args)


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
