"""`tune eval`: the metrics of a recipe (or any metric plugin) on a trained run, after the fact.

The run is loaded the way `tune merge` builds it (base + every adapt step's trained weights),
its eval data is re-tokenized when the run had some, and the chosen metrics' plugins are asked
exactly as at a run's eval points. Results go to `<run>/evals/<time>.json` and metrics.jsonl.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tune.contract.context import RunContext
from tune.errors import TuneError
from tune.recipe import select_backends

EVAL_ROLES = ("metrics", "data_source", "data_format", "objective")


def evaluate_run(
    source: Path,
    metrics: list[str],
    overrides: list[str],
    precision: str,
    pm: Any,
    console: Any,
    trust_remote_code: bool = False,
) -> tuple[dict[str, float], Path]:
    """Evaluate `source` (a run or model directory) on `metrics` (default: the recipe's)."""
    from tune.contract.evaluation import EvalData
    from tune.contract.objective import Objective
    from tune.machine.devices import auto_device
    from tune.trained.merge import load_trained, locate

    artifact, recipe_file, recipe = locate(source, pm, overrides, trust_remote_code)
    if metrics:  # these, and only their settings tables
        recipe.eval.metrics = list(metrics)
        raw_eval = recipe.raw.get("eval", {})
        recipe.raw["eval"] = {
            k: v for k, v in raw_eval.items() if not isinstance(v, dict) or k in metrics
        }
    if not recipe.eval.metrics:
        raise TuneError(
            "no metrics to compute.",
            where=str(source),
            fix="name them with --metric NAME (tune plugins list shows the installed ones).",
        )
    select_backends(recipe, pm, roles=EVAL_ROLES)
    model, tokenizer = load_trained(artifact, recipe, pm, precision)
    device = auto_device()
    model.to(device)
    ctx = RunContext(recipe=recipe, output_dir=artifact)
    ctx.world.device = device
    examples = _eval_examples(pm, recipe, tokenizer, ctx, console)
    data = EvalData(
        examples=examples,
        batch_size=recipe.eval.batch_size or recipe.train.micro_batch_size,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        device=device,
        max_batches=recipe.eval.max_batches,
        tokenizer=tokenizer,
        objective=Objective(),
    )
    results = pm.evaluate(recipe.backends["metrics"], model, data, ctx)
    run_dir = recipe_file.parent if recipe_file is not None else artifact
    if run_dir.name == "final":
        run_dir = run_dir.parent
    return results, _record(run_dir, artifact, recipe.eval.metrics, results)


def _eval_examples(pm, recipe, tokenizer, ctx, console) -> list[dict[str, Any]]:
    """The run's eval examples, tokenized as in training, when it had eval data that is here."""
    from tune.data.pipeline import load_examples

    if not (recipe.data.eval_files or recipe.data.eval_fraction):
        return []
    try:
        return load_examples(pm, tokenizer, ctx).eval
    except TuneError as exc:
        console.print(f"[yellow]note:[/yellow] no eval data ({exc.render()})", markup=True)
        return []


def _record(run_dir: Path, artifact: Path, metrics: list[str], results: dict) -> Path:
    """evals/<time>.json, and an "eval" line in metrics.jsonl when the run has one."""
    from tune.train.rundir import RunDir

    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = run_dir / "evals"
    if (run_dir / ".tune-run.json").exists():  # a run's folder: the run owns what it holds
        folder = RunDir(run_dir, where=f"tune eval {run_dir}").claim("evals")
    out = folder / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": str(artifact), "metrics": metrics, "results": results, "time": stamp}
    out.write_text(json.dumps(record, indent=2), encoding="utf-8")
    log = run_dir / "metrics.jsonl"
    summary = run_dir / "summary.json"
    if log.is_file():
        step = json.loads(summary.read_text())["steps"] if summary.is_file() else None
        line = {"kind": "eval", "step": step, "time": round(time.time(), 3), "source": "tune eval"}
        with log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({**line, **results}) + "\n")
    return out
