"""The tensorboard tracker, read back with TensorBoard's own event reader."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tune.testing import recipe_dict
from tune_plugin_tensorboard import samples_markdown


def _events(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _recipe(tmp_path, **train):
    return recipe_dict(
        tmp_path,
        data={"eval_fraction": 0.25},
        eval={"metrics": ["perplexity"]},
        train={"max_steps": 4, "save_every": 2, "eval_every": 2, **train},
        generate={"prompts": ["reverse hello"], "max_new_tokens": 4},
        track=[{"name": "tensorboard"}],
    )


@pytest.mark.slow
def test_scalars_text_and_resume_without_duplicates(tmp_path, run_recipe):
    run_recipe(_recipe(tmp_path))
    log_dir = tmp_path / "run" / "tensorboard"
    acc = _events(log_dir)
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    jsonl = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    expected = [(r["step"], r["loss"]) for r in jsonl if r["kind"] == "train"]
    assert [s for s, _ in losses] == [1, 2, 3, 4]
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/eval_loss")] == [2, 4]
    tags = acc.Tags()["tensors"]  # text summaries are tensors to the reader
    assert {"recipe/text_summary", "samples/text_summary", "summary/text_summary"} <= set(tags)

    # Resume from the step-2 checkpoint and train to step 6: steps 3.. are written again once.
    run_recipe(
        _recipe(tmp_path, max_steps=6),
        resume_from=tmp_path / "run" / "checkpoints" / "step-2",
        resume_changed=True,
    )
    acc = _events(log_dir)
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("eval/eval_loss")] == [2, 4, 6]


@pytest.mark.slow
def test_the_log_dir_in_the_run_directory_is_the_runs(tmp_path, run_recipe):
    """tensorboard/ is claimed: --overwrite replaces the earlier run's event files, and a
    user's folder of that name is never written to."""
    recipe = _recipe(tmp_path, max_steps=2, save_every=0, eval_every=0)
    run_recipe(recipe)
    recipe["optimizer"]["lr"] = 1e-2  # another run: other losses
    run_recipe(recipe, overwrite=True)
    log_dir = tmp_path / "run" / "tensorboard"
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    losses = [e.value for e in _events(log_dir).Scalars("train/loss")]
    jsonl = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert losses == pytest.approx([r["loss"] for r in jsonl if r["kind"] == "train"])

    other = tmp_path / "other"
    (other / "tensorboard").mkdir(parents=True)
    (other / "tensorboard" / "notes.txt").write_text("mine")
    recipe["train"]["output_dir"] = str(other)
    summary, _ = run_recipe(recipe, name="other.toml")
    assert summary["steps"] == 2  # the tracker is dropped with a warning; training goes on
    assert [p.name for p in (other / "tensorboard").iterdir()] == ["notes.txt"]


def test_samples_markdown_escapes_cells():
    text = samples_markdown([{"prompt": "a|b", "reply": "x\ny"}])
    assert text.splitlines()[-1] == "| a\\|b | x<br>y |"


@pytest.mark.slow
def test_missing_library_listed_and_only_breaks_runs_using_it(tmp_path):
    """Simulated uninstall of tensorboard: listed with why, refuses only recipes that use it."""
    from tune.testing import check_missing_library

    check_missing_library(tmp_path, "tensorboard", "tensorboard", _recipe(tmp_path))
