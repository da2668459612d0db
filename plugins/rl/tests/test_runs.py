"""Real (tiny) runs through the plugin: GRPO with LoRA and a reference, the prompt format's
length policy, samples, and what the recipe says about the rollout and rewards."""

from __future__ import annotations

import json

import pytest
from tune.testing import load_recipe, write_recipe


def _train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_grpo_with_lora_reference_metrics_and_samples(tmp_path, run_recipe, grpo_recipe_of):
    rows = (
        [{"prompt": "reverse " + "x" * 80, "answer": "x"}]
        + [{"prompt": [{"role": "user", "content": "reverse cat"}], "answer": "tac"}] * 3
        + [{"prompt": "reverse dog", "answer": "god"}] * 4
    )
    recipe = grpo_recipe_of(
        rows,
        data={"max_prompt_length": 40, "truncation": "drop"},
        objective={"beta": 0.1, "loss_type": "grpo", "log_completions_every": 1},
        reward=[
            {"name": "exact_match", "column": "answer"},
            {"name": "regex", "pattern": "^[a-z]", "weight": 0.5},
        ],
    )
    summary, loaded = run_recipe(recipe)
    assert "rollout" not in loaded.backends  # no [rollout]: the plugin's own engine sampled
    assert summary["steps"] == 2
    records = _train_records(tmp_path / "run")
    keys = set(records[0])
    for key in (
        "reward",
        "reward_std",
        "rewards/exact_match/mean",
        "rewards/regex/mean",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/clipped_ratio",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "kl",
        "entropy",
    ):
        assert key in keys, key
    assert all(0 < r["completions/max_length"] <= 4 for r in records)
    # The first step's KL is 0: the adapter starts as the identity (LoRA B = 0).
    assert abs(records[0]["kl"]) < 1e-6
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    first = [s for s in samples if s["step"] == 1]
    assert len(first) == 4 and {"prompt", "reply", "reward", "rewards"} <= set(first[0])
    # the 80-character prompt is longer than max_prompt_length: dropped, and counted
    assert summary["data"]["prompts_dropped"] == 1


def test_a_recipe_without_online_rl_builds_no_rollout(tmp_path):
    from tune.testing import recipe_dict

    path = write_recipe(tmp_path, recipe_dict(tmp_path))
    recipe = load_recipe(path)
    assert "rollout" not in recipe.backends and recipe.backends["reward"] == []
    assert "rollout" not in recipe.resolved()  # the saved recipe of an SFT run is unchanged


def test_gkd_distils_a_teacher_on_the_students_samples(tmp_path, run_recipe, grpo_recipe_of):
    from tune.testing import tiny_model

    teacher = tiny_model("tiny-llama", seed=1)  # other weights, the same tokenizer
    recipe = grpo_recipe_of(
        objective={"name": "gkd", "teacher": str(teacher), "num_generations": 2, "beta": 0.5},
        reward=[],
        adapt=[],
        train={"max_steps": 3},
        scheduler={"name": "constant"},
    )
    run_recipe(recipe)
    losses = [r["loss"] for r in _train_records(tmp_path / "run")]
    assert losses[0] > 0 and losses[-1] < losses[0], losses


@pytest.mark.slow
def test_resume_samples_the_same_completions(tmp_path, run_recipe, grpo_recipe_of):
    """--resume from a mid-run checkpoint replays the same steps: the sampling generator's state
    is in the checkpoint, so the completions, rewards and losses are the same."""
    recipe = grpo_recipe_of(train={"max_steps": 4, "save_every": 2}, adapt=[])
    run_recipe(recipe)
    first = _train_records(tmp_path / "run")
    run_recipe(recipe, resume_from=tmp_path / "run" / "checkpoints" / "step-2")
    again = _train_records(tmp_path / "run")
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(first[2:], again[2:], strict=True):
        for key in ("loss", "reward", "completions/mean_length", "entropy"):
            assert a[key] == b[key], (key, a, b)
