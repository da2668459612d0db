"""A reward that cannot work stops the run with one paragraph naming the function, the prompt
and the fix: a file or function that does not exist (at `tune validate`, before anything
loads), a function that raises, returns the wrong length, NaN or something not a number."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tune.plugin import TuneError
from tune.testing import load_recipe, refusal_paragraph, run_cli, write_recipe
from tune_plugin_rl.objectives import GRPOObjective, GRPOSettings
from tune_plugin_rl.rewards import Python, PythonSettings

REWARDS = """
import math

def good(prompts, completions, answer, **_):
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

def boom(prompts, completions, **_):
    raise KeyError("score")

def short(prompts, completions, **_):
    return [1.0]

def nan(prompts, completions, **_):
    return [math.nan for _ in completions]

def text(prompts, completions, **_):
    return ["high" for _ in completions]
"""


def _objective(tmp_path, function):
    (tmp_path / "rewards.py").write_text(REWARDS)
    ctx = SimpleNamespace(recipe=SimpleNamespace(path=tmp_path / "recipe.toml"))
    objective = GRPOObjective(GRPOSettings(num_generations=2))
    objective.rewards = [("python", 1.0, Python(PythonSettings(function=function), ctx))]
    objective.ctx = ctx
    return objective


@pytest.mark.parametrize(
    "function,said",
    [
        ("boom", "raised KeyError: 'score' on prompt 0 of this step"),
        ("short", "returned 1 values for 4 completions"),
        ("nan", "returned nan for completion 0 of prompt 0"),
        ("text", "returned 'high' (str) for completion 0 of prompt 0"),
    ],
)
def test_a_reward_that_answers_wrongly_is_one_paragraph(tmp_path, function, said):
    objective = _objective(tmp_path, f"rewards.py:{function}")
    rows = [{"answer": "a"}, {"answer": "a"}, {"answer": "b"}, {"answer": "b"}]
    with pytest.raises(TuneError) as info:
        objective.score(["p"] * 4, ["a", "x", "b", "b"], rows)
    text = info.value.render()
    assert said in text and f"rewards.py:{function}" in text and "Fix:" in text
    assert "\n" not in text


def test_a_good_function_gets_the_columns(tmp_path):
    objective = _objective(tmp_path, "rewards.py:good")
    rows = [{"answer": "a"}, {"answer": "a"}, {"answer": "b"}, {"answer": "b"}]
    assert objective.score(["p"] * 4, ["a", "x", "b", "b"], rows)[:, 0].tolist() == [1, 0, 1, 1]


def test_missing_function_or_file_is_refused_at_validation(tmp_path, grpo_recipe_of):
    (tmp_path / "rewards.py").write_text(REWARDS)
    recipe = grpo_recipe_of(reward=[{"name": "python", "function": "rewards.py:gud"}])
    with pytest.raises(TuneError, match="defines no function 'gud'.*boom, good, nan"):
        load_recipe(write_recipe(tmp_path, recipe))
    recipe["reward"] = [{"name": "python", "function": "missing.py:good"}]
    path = write_recipe(tmp_path, recipe, "missing.toml")
    out = run_cli("validate", str(path))
    assert out.returncode == 2, out.stderr
    paragraph = refusal_paragraph(out)
    assert "reward function file 'missing.py' was not found" in paragraph
    assert "Traceback" not in out.stdout + out.stderr


def test_a_raising_reward_stops_the_run_cleanly(tmp_path, run_recipe, grpo_recipe_of):
    (tmp_path / "rewards.py").write_text(REWARDS)
    recipe = grpo_recipe_of(
        reward=[{"name": "python", "function": "rewards.py:boom"}], adapt=[], train={"max_steps": 1}
    )
    with pytest.raises(
        TuneError,
        match=r"reward 'boom' raised KeyError: 'score' on prompt 0 of this step \(rank 0, row "
        r".*prompts.jsonl:1\)",
    ):
        run_recipe(recipe)


def test_sequence_parallelism_is_refused_at_validation(tmp_path, grpo_recipe_of):
    recipe = grpo_recipe_of(strategy={"name": "ddp", "sequence_parallel": 2})
    with pytest.raises(TuneError, match="do not run together yet") as caught:
        load_recipe(write_recipe(tmp_path, recipe))
    assert "[strategy] sequence_parallel" in caught.value.where
