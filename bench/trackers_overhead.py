"""Overhead of logging to TensorBoard, W&B (offline) and MLflow (SQLite) at once, on the quickstart.

The same short quickstart run (recipes/quickstart.toml, fewer steps) with and without the three
`[[track]]` tables, alternating, a few repeats, each in its own `tune run` process. The figure is
the ratio of the training tokens/s (summary.json `tokens_per_s`: tokens over the training loop's
wall time, so every log/eval/checkpoint event the trackers receive is inside it) with trackers to
without, median over the pairs. Tracker start-up (wandb.init, the SQLite schema) and the end
(artifacts) happen outside the loop: they are reported separately as the whole process's wall
time. Nothing leaves the machine: W&B runs offline, MLflow writes a SQLite file.

    python bench/trackers_overhead.py [--steps 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACKS = """
[[track]]
name = "tensorboard"

[[track]]
name = "wandb"
mode = "offline"
project = "tune-bench"

[[track]]
name = "mlflow"
"""


def recipe(folder: Path, with_trackers: bool) -> Path:
    """The quickstart with absolute data paths, plus the three trackers when asked."""
    text = (ROOT / "recipes" / "quickstart.toml").read_text(encoding="utf-8")
    data = ROOT / "recipes" / "data"
    text = text.replace('"data/', f'"{data}/')
    path = folder / ("tracked.toml" if with_trackers else "plain.toml")
    path.write_text(text + (TRACKS if with_trackers else ""), encoding="utf-8")
    return path


def one_run(path: Path, out: Path, steps: int, env: dict[str, str]) -> dict:
    """One `tune run`; eval and a checkpoint at half way, so every event kind is in the loop."""
    args = [sys.executable, "-m", "tune", "run", str(path), "--overwrite"]
    args += ["-o", f"train.max_steps={steps}", "-o", f"train.output_dir={out}"]
    half = max(steps // 2, 1)
    args += ["-o", f"train.eval_every={half}", "-o", f"train.save_every={half}"]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {"tokens_per_s": summary["tokens_per_s"], "loop_s": summary["wall_s"], "process_s": wall}


def replay(run_dir: Path, folder: Path) -> dict:
    """Seconds the three trackers spend on a run's in-loop events (train logs, evals,
    checkpoints), replayed from its metrics.jsonl into fresh trackers in this process: a figure
    the machine's load hardly moves, to set beside the loop's wall time."""
    import tune_plugin_mlflow
    import tune_plugin_tensorboard
    import tune_plugin_wandb
    from tune.plugin import RunInfo

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open(encoding="utf-8")]
    recipe = {"train": {"max_steps": len(records)}}  # params and config: any small dict
    out = folder / "replay"
    trackers = {
        "tensorboard": tune_plugin_tensorboard.TensorBoardTracker(
            tune_plugin_tensorboard.TensorBoardSettings()
        ),
        "wandb": tune_plugin_wandb.WandbTracker(
            tune_plugin_wandb.WandbSettings(mode="offline", project="tune-bench")
        ),
        "mlflow": tune_plugin_mlflow.MlflowTracker(tune_plugin_mlflow.MlflowSettings()),
    }
    for tracker in trackers.values():
        tracker.start(RunInfo(recipe=recipe, output_dir=out, name="replay"))
    spent = dict.fromkeys(trackers, 0.0)
    for record in records:
        kind, step = record.pop("kind"), record.pop("step")
        record.pop("time", None)
        if kind not in ("train", "eval", "checkpoint"):
            continue
        for name, tracker in trackers.items():
            start = time.perf_counter()
            if kind == "checkpoint":
                tracker.checkpoint(step, Path(record["path"]))
            else:
                tracker.log(kind, step, record)
            spent[name] += time.perf_counter() - start
    for tracker in trackers.values():
        tracker.end({"steps": 0})
    return {name: round(seconds, 4) for name, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tune-trackers-bench-") as tmp:
        folder = Path(tmp)
        env = {
            **os.environ,
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_DIR": str(folder / "wandb-home"),
            "WANDB_CONFIG_DIR": str(folder / "wandb-config"),
            "WANDB_CACHE_DIR": str(folder / "wandb-cache"),
            "TUNE_CACHE": str(folder / "tune-cache"),
        }
        env.pop("WANDB_API_KEY", None)
        plain, tracked = recipe(folder, False), recipe(folder, True)
        one_run(plain, folder / "warmup", 20, env)  # tokenization cache, imports warm
        pairs = []
        for i in range(args.repeats):
            order = [("plain", plain), ("tracked", tracked)]
            if i % 2:
                order.reverse()  # alternate who goes first
            pair = {}
            for label, path in order:
                pair[label] = one_run(path, folder / f"{label}-{i}", args.steps, env)
                print(f"repeat {i + 1} {label}: {pair[label]}", flush=True)
            pairs.append(pair)
        in_loop = replay(folder / f"tracked-{args.repeats - 1}", folder)
    ratios = [p["tracked"]["tokens_per_s"] / p["plain"]["tokens_per_s"] for p in pairs]
    process = [p["tracked"]["process_s"] - p["plain"]["process_s"] for p in pairs]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "recipe": "recipes/quickstart.toml",
        "steps": args.steps,
        "repeats": args.repeats,
        "pairs": pairs,
        "tokens_per_s_ratio_each": [round(r, 4) for r in ratios],
        "tokens_per_s_ratio_median": round(statistics.median(ratios), 4),
        "overhead_pct_median": round((1 - statistics.median(ratios)) * 100, 2),
        "extra_process_s_median": round(statistics.median(process), 2),
        "replayed_in_loop_s": in_loop,
        "replayed_in_loop_pct_of_loop": round(
            100 * sum(in_loop.values()) / pairs[-1]["tracked"]["loop_s"], 3
        ),
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"trackers-overhead-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    rows = "\n".join(
        f"| {i + 1} | {p['plain']['tokens_per_s']:,.0f} | {p['tracked']['tokens_per_s']:,.0f} | "
        f"{r:.3f} | {p['plain']['process_s']:.1f} | {p['tracked']['process_s']:.1f} |"
        for i, (p, r) in enumerate(zip(pairs, ratios, strict=True))
    )
    stem.with_suffix(".md").write_text(
        f"""# Tracker overhead: TensorBoard + W&B (offline) + MLflow (SQLite) at once

{result["date"]}, {result["machine"]}. `python bench/trackers_overhead.py --steps {args.steps}
--repeats {args.repeats}`: the quickstart (tiny Llama, fp32, CPU, log_every 20; eval, a
checkpoint at step {max(args.steps // 2, 1)}, final save, eval and samples at the end) for
{args.steps} steps, with and without the three `[[track]]` tables, alternating, each in its own
process.

| repeat | tokens/s plain | tokens/s 3 trackers | ratio | process s plain | process s trackers |
|---|---|---|---|---|---|
{rows}

Median tokens/s ratio (with / without): **{result["tokens_per_s_ratio_median"]}**, i.e. an
overhead of {result["overhead_pct_median"]}% in the training loop (target <= 3%). Tracker start
and end (wandb.init and its service, the MLflow schema, artifacts) add a median
{result["extra_process_s_median"]} s per process, outside the loop.

The machine is shared, so single pairs are noisy. A figure the load hardly moves: the in-loop
events of the last tracked run (its metrics.jsonl: train logs, evals, checkpoints) replayed into
fresh trackers in one process took {in_loop} s, i.e.
**{result["replayed_in_loop_pct_of_loop"]}%** of that run's {pairs[-1]["tracked"]["loop_s"]} s loop.
""",
        encoding="utf-8",
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
