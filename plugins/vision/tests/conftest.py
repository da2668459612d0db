"""Fixtures of the vision plugin's tests: generated shape images and a small vision recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tune.testing import update_tables


def vision_recipe(tmp_path: Path, n_train: int = 32, n_eval: int = 8, **tables: Any) -> dict:
    """A tiny Qwen2-VL-shaped run on generated shape images: LoRA r 8 on q/v, fp32, in order."""
    from tune_plugin_vision.shapes import write

    train, evals = write(tmp_path / "shapes", n_train, n_eval, seed=0)
    base: dict[str, Any] = {
        "model": {"loader": "vision", "path": "tune:tiny-qwen2-vl", "max_seq_len": 128},
        "data": {"format": "vision_chat", "train": str(train), "shuffle": False},
        "objective": {"name": "vision_lm"},
        "adapt": [
            {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}
        ],
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
        "scheduler": {"name": "constant"},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 8,
            "micro_batch_size": 4,
            "precision": "fp32",
            "log_every": 1,
            "seed": 0,
        },
        "eval": {"metrics": []},
    }
    if n_eval:
        base["data"]["eval"] = str(evals)
    return update_tables(base, tables)


@pytest.fixture
def vision_recipe_of(tmp_path):
    """`vision_recipe_of(n_train=32, n_eval=8, **tables)`: a recipe dict in this tmp_path."""

    def make(n_train: int = 32, n_eval: int = 8, **tables: Any) -> dict:
        return vision_recipe(tmp_path, n_train, n_eval, **tables)

    return make
