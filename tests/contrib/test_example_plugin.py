"""The template plugin in contrib/ works as installed: listed, validated, and its metric runs."""

from __future__ import annotations

import json

from tune.testing import recipe_dict, run_cli


def test_example_plugin_is_listed_from_its_entry_point():
    rows = {r["name"]: r for r in json.loads(run_cli("plugins", "list", "--json").stdout)}
    assert rows["example"]["distribution"] == "tune-plugin-example"
    assert rows["example"]["provides"] == ["metric:token_accuracy"]
    assert rows["example"]["hooks"] == ["evaluate"]


def test_example_metric_in_a_run(tmp_path, run_recipe):
    data = recipe_dict(
        tmp_path,
        data={"eval_fraction": 0.25},
        eval={"metrics": ["perplexity", "token_accuracy"], "token_accuracy": {"top_k": 5}},
        train={"max_steps": 2},
    )
    summary, recipe = run_recipe(data)
    assert recipe.backends["metrics"]["token_accuracy"].backend.plugin == "example"
    assert 0.0 <= summary["eval"]["token_accuracy@5"] <= 1.0
