"""What a third-party author hit while writing plugins from the docs alone, each fixed and held.

The plugin objects here are what such an author writes: `tune.plugin` only, registered for one
test with `tune.testing`'s `tune_plugin` fixture.
"""

from __future__ import annotations

import json
import shutil

import pytest
from tune.errors import TuneError
from tune.plugin import LossOutput, Objective, Settings, Tracker, hookimpl
from tune.testing import recipe_dict, run_cli, write_jsonl, write_recipe

from tests.conftest import REPO


class Unbuildable(Tracker):
    def __init__(self, settings, ctx):
        raise ConnectionError("no tracking server at localhost:5000")


class StatelessTracker(Tracker):
    def state(self):
        raise ValueError("cannot say")


class Trackers:
    @hookimpl
    def tune_provide(self, provide):
        provide.tracker("unbuildable", build=Unbuildable)
        provide.tracker("stateless", build=StatelessTracker)


def test_a_tracker_that_cannot_be_built_is_dropped_with_one_warning(
    tmp_path, run_recipe, tune_plugin, capsys
):
    tune_plugin(Trackers(), "trackers")
    summary, _ = run_recipe(recipe_dict(tmp_path, track=[{"name": "unbuildable"}]))
    out = capsys.readouterr().out
    assert summary["steps"] == 4
    assert "tracker 'unbuildable' could not start" in out and "Traceback" not in out


def test_a_tracker_whose_state_fails_is_dropped_not_saved_as_empty(
    tmp_path, run_recipe, tune_plugin, capsys
):
    tune_plugin(Trackers(), "trackers")
    data = recipe_dict(tmp_path, track=[{"name": "stateless"}], train={"save_every": 2})
    run_recipe(data)
    out = capsys.readouterr().out
    assert "tracker 'stateless' failed in state" in out
    saved = json.loads((tmp_path / "run/checkpoints/step-4/state.json").read_text())
    assert "stateless" not in saved["trackers"]


class Boom(Objective):
    def loss(self, model, batch):
        if self.ctx.metrics.records and self.ctx.metrics.records[-1]["step"] >= 2:
            raise RuntimeError("my objective has a bug")
        return super().loss(model, batch)


class NaNLoss(Objective):
    def loss(self, model, batch):
        out = super().loss(model, batch)
        return LossOutput(out.loss * float("nan"))


class Objectives:
    @hookimpl
    def tune_provide(self, provide):
        provide.objective("boom", build=Boom)
        provide.objective("nan_loss", build=NaNLoss)


def test_an_objective_bug_keeps_its_traceback_and_says_how_to_resume(
    tmp_path, run_recipe, tune_plugin, capsys
):
    tune_plugin(Objectives(), "objectives")
    data = recipe_dict(tmp_path, objective={"name": "boom"}, train={"save_every": 1})
    with pytest.raises(RuntimeError, match="my objective has a bug"):
        run_recipe(data)
    flat = "".join(capsys.readouterr().out.split())  # the console wraps long lines anywhere
    assert "step3failed" in flat and "checkpoints/step-2" in flat and "--resume" in flat, flat


def test_a_nan_loss_names_the_objective_that_made_it_in_one_paragraph(
    tmp_path, run_recipe, tune_plugin
):
    tune_plugin(Objectives(), "objectives")
    with pytest.raises(TuneError) as info:
        run_recipe(recipe_dict(tmp_path, objective={"name": "nan_loss"}))
    text = str(info.value)
    assert "objective 'nan_loss' (plugin 'objectives')" in text and "nan" in text
    assert "no checkpoint was written yet" in text


def test_python_m_tune_works_beside_a_folder_named_tune(tmp_path):
    checkout = tmp_path / "tune"
    checkout.mkdir()
    shutil.copy(REPO / "pyproject.toml", checkout / "pyproject.toml")
    (checkout / "core").mkdir()
    res = run_cli("--version", cwd=tmp_path)
    assert res.returncode == 0 and "tune, version" in res.stdout, res.stderr


def test_several_processes_for_a_single_process_strategy_are_refused_before_relaunching(tmp_path):
    path = write_recipe(tmp_path, recipe_dict(tmp_path))
    res = run_cli("run", "--nproc-per-node", "2", str(path))
    assert res.returncode == 2, res.stderr
    assert "runs a single process" in res.stderr and "strategy.name=" in res.stderr
    assert "torch.distributed" not in res.stderr and "Traceback" not in res.stderr


class GammaSettings(Settings):
    from pydantic import Field

    gamma: float = Field(0.0, ge=0)


class GammaObjective:
    @hookimpl
    def tune_provide(self, provide):
        provide.objective("gamma", GammaSettings, build=Objective)


def test_a_value_out_of_range_reads_as_a_sentence(tmp_path, tune_plugin):
    from tune.testing import load_recipe

    tune_plugin(GammaObjective(), "gammas")
    path = write_recipe(tmp_path, recipe_dict(tmp_path, objective={"name": "gamma", "gamma": -1}))
    with pytest.raises(TuneError) as info:
        load_recipe(path)
    text = str(info.value)
    assert "gamma = -1 is not allowed" in text and "at least 0" in text
    assert "input should" not in text.lower()


def test_a_null_field_is_said_to_be_null(tmp_path):

    data = recipe_dict(tmp_path)
    train = tmp_path / "pc.jsonl"
    write_jsonl(train, [{"prompt": "hi", "completion": None}])
    data["data"] = {"format": "prompt_completion", "train": str(train)}
    path = write_recipe(tmp_path, data)
    res = run_cli("validate", str(path))
    assert res.returncode == 2, res.stderr
    text = res.stderr.replace("\n", " ")
    assert "'completion' is null" in text and "row has no" not in text


def test_a_streaming_runs_data_line_says_it_streams(tmp_path, run_recipe, capsys):
    data = recipe_dict(tmp_path, data={"streaming": True}, train={"max_steps": 2})
    run_recipe(data)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data:"))
    assert "streamed" in line and "None" not in line and "(0/epoch)" not in line
