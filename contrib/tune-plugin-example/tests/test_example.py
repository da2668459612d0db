"""tune-plugin-example: declared as installed, and its metric computed in a real (tiny) run."""

from __future__ import annotations

import json

from tune.testing import recipe_dict, run_cli

BACKEND = "token_accuracy"  # the name recipes use
PLUGIN = "example"  # the entry point name


def test_listed_with_its_metric():
    rows = {r["name"]: r for r in json.loads(run_cli("plugins", "list", "--json").stdout)}
    assert rows[PLUGIN]["status"] == "ok"
    assert rows[PLUGIN]["provides"] == [f"metric:{BACKEND}"]


def test_metric_in_a_run(tmp_path, run_recipe):
    data = recipe_dict(
        tmp_path,
        data={"eval_fraction": 0.25},
        eval={"metrics": ["perplexity", BACKEND], BACKEND: {"top_k": 5}},
        train={"max_steps": 2},
    )
    summary, recipe = run_recipe(data)
    assert recipe.backends["metrics"][BACKEND].backend.plugin == PLUGIN
    top5 = summary["eval"][f"{BACKEND}@5"]
    assert 0.0 < top5 <= 1.0
