"""The mlflow tracker, read back with MlflowClient over the run's SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tune.testing import recipe_dict
from tune_plugin_mlflow import MAX_PARAM_VALUE, flatten, local_path

MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient


def _recipe(tmp_path, **train):
    return recipe_dict(
        tmp_path,
        data={"eval_fraction": 0.25},
        eval={"metrics": ["perplexity"]},
        train={"max_steps": 4, "save_every": 2, "eval_every": 2, **train},
        generate={"prompts": ["reverse hello"], "max_new_tokens": 4},
        track=[{"name": "mlflow", "experiment": "tests"}],
    )


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_params_metrics_artifacts_and_resume_same_run(tmp_path, run_recipe):
    run_dir = tmp_path / "run"
    run_recipe(_recipe(tmp_path))
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    assert params["optimizer.lr"] == "0.001" and params["model.path"] == "tune:tiny-llama"
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    expected = [(r["step"], r["loss"]) for r in jsonl if r["kind"] == "train"]
    history = _history(client, run.info.run_id, "loss")
    assert [s for s, _ in history] == [1, 2, 3, 4]
    assert [v for _, v in history] == pytest.approx([v for _, v in expected])
    assert [s for s, _ in _history(client, run.info.run_id, "eval_loss")] == [2, 4]
    assert [s for s, _ in _history(client, run.info.run_id, "eval_perplexity")] == [2, 4]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"final", "summary.json", "samples"} <= top
    final = {a.path for a in client.list_artifacts(run.info.run_id, "final")}
    assert "final/model.safetensors" in final and "final/recipe.toml" in final
    local = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
    with open(local) as fh:
        assert json.load(fh)["steps"] == 4

    # --resume from step 2 (not the last checkpoint) to step 6: the same run id; steps 3 and 4
    # are trained again, and the run holds each step once.
    run_recipe(
        _recipe(tmp_path, max_steps=6),
        resume_from=run_dir / "checkpoints" / "step-2",
        resume_changed=True,  # more steps: a changed training setting
    )
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [s for s, _ in _history(client, run.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in _history(client, run.info.run_id, "eval_loss")] == [2, 4, 6]
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    replayed = [r["loss"] for r in jsonl if r["kind"] == "train" and r["step"] in (3, 4)]
    kept = [v for s, v in _history(client, run.info.run_id, "loss") if s in (3, 4)]
    assert kept == pytest.approx(replayed)  # exact resume: the replay trains the same losses
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    for path in samples:  # a replayed step's table is not appended to
        local = client.download_artifacts(run.info.run_id, path, str(tmp_path / "dl"))
        with open(local) as fh:
            table = json.load(fh)
        assert len(table["data"]) == 1, (path, table)
    changed = json.loads(again.data.tags["tune.resumed_with"])
    assert changed["train.max_steps"] == "6" and again.data.params["train.max_steps"] == "4"


@pytest.mark.slow
def test_the_store_in_the_run_directory_is_the_runs(tmp_path, run_recipe):
    """mlflow.db and mlartifacts/ are claimed: --overwrite replaces them with the new run's, and
    a user's file of that name is never written to."""
    run_dir = tmp_path / "run"
    recipe = _recipe(tmp_path, max_steps=2, save_every=0, eval_every=0)
    run_recipe(recipe)
    assert (run_dir / "mlflow.db").is_file() and (run_dir / "mlartifacts").is_dir()
    run_recipe(recipe, overwrite=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests").experiment_id
    assert len(client.search_runs([experiment])) == 1  # not the first run's store, appended to

    other = tmp_path / "other"
    other.mkdir()
    (other / "mlflow.db").write_text("mine")
    recipe["train"]["output_dir"] = str(other)
    summary, _ = run_recipe(recipe, name="other.toml")
    assert summary["steps"] == 2  # the tracker is dropped with a warning; training goes on
    assert (other / "mlflow.db").read_text() == "mine"


def test_local_paths_of_stores_and_artifact_locations(tmp_path):
    assert local_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert local_path(tmp_path.as_uri()) == tmp_path and local_path("runs/x") == Path("runs/x")
    for remote in ("http://mlflow:5000", "postgresql://u@h/db", "s3://b/x", "databricks"):
        assert local_path(remote) is None


def test_flatten_keys_and_limits():
    flat = flatten({"optimizer": {"lr": 0.001}, "adapt": [{"method": "lora"}], "x": "a" * 9000})
    assert flat == {"optimizer.lr": "0.001", "adapt.0.method": "lora", "x": "a" * MAX_PARAM_VALUE}


@pytest.mark.slow
def test_missing_library_listed_and_only_breaks_runs_using_it(tmp_path):
    """Simulated uninstall of mlflow: listed with why, refuses only recipes that use it."""
    from tune.testing import check_missing_library

    check_missing_library(tmp_path, "mlflow", "mlflow", _recipe(tmp_path))
