"""Fixtures of the plugin's tests: prompt rows with answers and a small GRPO recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tune.testing import recipe_dict, update_tables, write_jsonl

WORDS = ["cat", "dog", "sun", "map", "red", "box", "hat", "pen", "cup", "owl", "ant", "bee"]


def prompt_rows(n: int) -> list[dict[str, Any]]:
    """'reverse cat' -> answer 'tac', as the quickstart's task, one word per row."""
    return [{"prompt": f"reverse {w}", "answer": w[::-1]} for w in (WORDS * n)[:n]]


def grpo_recipe(tmp_path: Path, rows: list[dict] | None = None, **tables: Any) -> dict[str, Any]:
    """GRPO on the tiny Llama with LoRA, 2 prompts x 2 completions of 4 tokens a step, fp32."""
    data = write_jsonl(tmp_path / "prompts.jsonl", rows if rows is not None else prompt_rows(16))
    base = recipe_dict(
        tmp_path,
        data={"format": "prompt", "train": str(data), "template": "llama-3.1", "shuffle": False},
        objective={"name": "grpo", "num_generations": 2, "max_completion_length": 4},
        reward=[{"name": "exact_match", "column": "answer"}],
        adapt=[{"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}],
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
        train={"max_steps": 2, "micro_batch_size": 2},
    )
    return update_tables(base, tables)


@pytest.fixture
def grpo_recipe_of(tmp_path):
    """`grpo_recipe_of(rows=None, **tables)`: a GRPO recipe dict in tmp_path."""
    return lambda rows=None, **tables: grpo_recipe(tmp_path, rows, **tables)
