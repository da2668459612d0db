"""Fixtures of the plugin's tests: preference pairs and a small DPO recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tune.testing import chat_rows, recipe_dict, update_tables, write_jsonl


def make_pairs(n: int) -> list[dict[str, Any]]:
    """TRL-layout pairs from the quickstart's reverse-word chats: the reversed word is chosen,
    the word echoed back is rejected."""
    rows = []
    for row in chat_rows(n):
        user, assistant = row["messages"]
        echo = {"role": "assistant", "content": user["content"].split()[-1]}
        rows.append({"prompt": [user], "chosen": [assistant], "rejected": [echo]})
    return rows


def dpo_recipe(tmp_path: Path, rows: list[dict] | None = None, **tables: Any) -> dict[str, Any]:
    """A small DPO recipe on the tiny Llama with LoRA (r 8), fp32, 4 pairs a step, in order."""
    data = write_jsonl(tmp_path / "pairs.jsonl", rows if rows is not None else make_pairs(32))
    base = recipe_dict(
        tmp_path,
        data={
            "format": "preference",
            "train": str(data),
            "template": "llama-3.1",
            "shuffle": False,
        },
        objective={"name": "dpo", "beta": 0.1},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0}],
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
    )
    return update_tables(base, tables)


@pytest.fixture
def pairs():
    """`pairs(n)`: n preference rows (TRL layout)."""
    return make_pairs


@pytest.fixture
def dpo_recipe_of(tmp_path):
    """`dpo_recipe_of(rows=None, **tables)`: a DPO recipe dict in this test's tmp_path."""

    def make(rows=None, **tables):
        return dpo_recipe(tmp_path, rows, **tables)

    return make
