"""DPO's peak memory with and without the chunked label log-probs, on a realistic vocabulary.

DPO needs only the log-probability of each label token, for the policy (with gradients) and the
reference (without). Built from full logits that is a [2 x pairs, width, vocab] float32 tensor
per forward, plus its log-softmax and gradient; `token_logprobs` computes the same values a chunk
of target positions at a time. This runs the same LoRA DPO work both ways, each in its own
process (`tune run`, `[train] chunked_loss = true|false`), alternating, and reports peak RSS and
tokens/s as ratios measured in one invocation.

Model: bench/vs_trainer.py's random-init SmolLM2-135M-shaped Llama (vocab 49,152, 30 layers),
built in code; data: ../shared/data/dpo_en_demo.json (real preference pairs, chatml); LoRA r8
on all linear layers, fp32, 2 pairs per micro-batch, max_seq_len 512, AdamW.

    python bench/dpo_memory.py [--steps 4] [--rounds 1]

Writes bench/results/dpo-memory-<date>.json and .md.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vs_trainer import build_model_dir  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "dpo_en_demo.json"
PAIRS, SEQ = 2, 512
# The child: `tune run` in this process, then its own peak RSS (ru_maxrss, KiB on Linux).
CHILD = """
import resource, runpy, sys
sys.argv = ["tune", "run", sys.argv[1], "--overwrite"]
try:
    runpy.run_module("tune", run_name="__main__")
except SystemExit as exc:
    if exc.code:
        raise
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def recipe(work: Path, model_dir: Path, steps: int, chunked: bool) -> Path:
    from tune.testing import recipe_dict, write_recipe

    data = recipe_dict(
        work,
        model={"path": str(model_dir), "max_seq_len": SEQ},
        data={"format": "preference", "train": str(DATA), "template": "chatml", "shuffle": False},
        objective={"name": "dpo", "beta": 0.1},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "targets": "all-linear"}],
        optimizer={"name": "adamw", "lr": 1e-5, "weight_decay": 0.0},
        train={
            "output_dir": str(work / "run"),
            "max_steps": steps,
            "micro_batch_size": PAIRS,
            "chunked_loss": chunked,
            "save_every": 0,
            "log_every": 1,
        },
    )
    return write_recipe(work, data, f"dpo-{'chunked' if chunked else 'plain'}.toml")


def measure(work: Path, model_dir: Path, steps: int, chunked: bool) -> dict:
    path = recipe(work, model_dir, steps, chunked)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env
    )
    peak = [x for x in proc.stdout.splitlines() if x.startswith("PEAK_KIB")]
    if proc.returncode or not peak:
        raise SystemExit(f"run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    lines = (work / "run" / "metrics.jsonl").read_text().splitlines()
    train = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    return {
        "chunked": chunked,
        "peak_rss_gib": round(int(peak[-1].split()[1]) / 2**20, 3),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in train[1:]), 1),
        "losses": [round(r["loss"], 5) for r in train],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tune-dpo-memory"))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = build_model_dir(Path(tempfile.gettempdir()) / "tune-vs-trainer")
    rows = []
    for _ in range(args.rounds):
        for chunked in (True, False):
            rows.append(measure(work, model_dir, args.steps, chunked))
            print(json.dumps(rows[-1]), flush=True)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    import torch
    import transformers

    def median(chunked: bool, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["chunked"] == chunked)

    date = datetime.date.today().isoformat()
    meta = {
        "date": date,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": "python bench/dpo_memory.py " + " ".join(sys.argv[1:]),
        "work": f"LoRA r8 all-linear DPO, fp32, {PAIRS} pairs per micro-batch, max_seq_len "
        f"{SEQ}, {args.steps} steps (tokens/s: median of steps 2..), dpo_en_demo.json",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"dpo-memory-{date}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = [f"# DPO with chunked label log-probs vs full logits ({date})", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    md += [
        "",
        "| label log-probs | peak RSS GiB | vs full logits | tokens/s | vs full logits | losses |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for chunked in (True, False):
        peak, rate = median(chunked, "peak_rss_gib"), median(chunked, "tokens_per_s")
        losses = next(r["losses"] for r in rows if r["chunked"] == chunked)
        md.append(
            f"| {'chunked (default)' if chunked else 'full logits (chunked_loss = false)'} | "
            f"{peak:.2f} | {peak / median(False, 'peak_rss_gib'):.2f}x | {rate:,.0f} | "
            f"{rate / median(False, 'tokens_per_s'):.2f}x | {', '.join(map(str, losses))} |"
        )
    stem.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
