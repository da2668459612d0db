"""lm_eval metric: the harness on the trained model, at the end of a run and with `tune eval`,
giving exactly what lm-eval's own CLI reports for the same model files (a local task, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tune.testing import recipe_dict, run_cli

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
WORDS = ["hello", "world", "tune", "model", "layer", "token", "batch", "adapt", "cache", "query"]

TASK = """
task: tune_tiny_reverse
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def local_task(folder):
    """A multiple-choice task over a local jsonl: which string is the word reversed?"""
    rows = []
    for i, word in enumerate(WORDS):
        wrong = WORDS[(i + 3) % len(WORDS)][::-1]
        choices = [word[::-1], wrong] if i % 2 else [wrong, word[::-1]]
        rows.append(
            {"question": f"reverse {word}", "choices": choices, "answer": choices.index(word[::-1])}
        )
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "task.yaml").write_text(TASK.format(data=data))
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


@pytest.mark.slow
def test_tune_eval_equals_lm_evals_own_cli_and_the_end_of_run_metric(tmp_path, run_recipe):
    tasks = local_task(tmp_path / "tasks")
    options = {"tasks": ["tune_tiny_reverse"], "include_path": str(tasks), "batch_size": 4}
    options["builtin_tasks"] = False  # only the local task: no indexing of lm-eval's own
    data = recipe_dict(
        tmp_path, eval={"metrics": ["lm_eval"], "lm_eval": options}, data={"eval_fraction": 0.1}
    )
    data["train"]["max_steps"] = 6
    summary, _ = run_recipe(data)
    at_end = summary["eval"]["lm_eval/tune_tiny_reverse/acc"]
    out = run_cli(
        "eval", str(tmp_path / "run"), "--metric", "lm_eval", "--dtype", "fp32",
        "-o", 'eval.lm_eval.tasks=["tune_tiny_reverse"]',
        "-o", f"eval.lm_eval.include_path={json.dumps(str(tasks))}",
        "-o", "eval.lm_eval.builtin_tasks=false",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    written = sorted((tmp_path / "run" / "evals").glob("*.json"))
    ours = json.loads(written[-1].read_text())["results"]["lm_eval/tune_tiny_reverse/acc"]
    harness = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
         "--model_args", f"pretrained={tmp_path / 'run' / 'final'},dtype=float32",
         "--tasks", "tune_tiny_reverse", "--include_path", str(tasks), "--device", "cpu",
         "--batch_size", "4", "--output_path", str(tmp_path / "harness")],
        capture_output=True, text=True, env={**os.environ, **OFFLINE}, timeout=600,
    )  # fmt: skip
    assert harness.returncode == 0, harness.stderr[-3000:]
    result_file = next((tmp_path / "harness").rglob("results_*.json"))
    theirs = json.loads(result_file.read_text())["results"]["tune_tiny_reverse"]["acc,none"]
    assert ours == theirs == at_end
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["source"] == "tune eval" and last["lm_eval/tune_tiny_reverse/acc"] == ours


def test_a_missing_task_folder_is_a_clear_error(tmp_path, run_recipe):
    data = recipe_dict(tmp_path, train={"max_steps": 1})
    run_recipe(data)
    out = run_cli(
        "eval", str(tmp_path / "run"), "--metric", "lm_eval",
        "-o", 'eval.lm_eval.tasks=["x"]', "-o", 'eval.lm_eval.include_path="nowhere"',
        "-o", "eval.lm_eval.builtin_tasks=false",
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "nowhere" in out.stderr
