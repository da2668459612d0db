"""CPU tokens/s of a DPO step: tune (tune-plugin-preference) vs TRL's DPOTrainer, same work.

Same tiny model (tune:tiny-llama, fp32, CPU), same LoRA initialisation (TRL trains the very model
tune builds for the recipe), same pairs in the same order, micro-batch, beta and optimizer.
Tokens per step are the prompt + reply tokens of both sequences of every pair (identical for
both, the tokenization being identical). Steps after the first `--warmup` are timed: tune from
its metrics.jsonl timestamps, TRL with a callback at every step end. Sides alternate over
`--rounds` (tune, TRL, tune precompute_ref; then the reverse order), so a load change on a shared
machine hits both; the ratios are of the per-side medians. `tune precompute_ref` scores the
reference once before step 1 (not timed) and runs no reference forward per step.

    python bench/dpo_vs_trl.py [--steps 30] [--warmup 5] [--micro 8] [--rounds 2]

On a shared, loaded machine set OMP_NUM_THREADS=1: with two torch threads each op waits for
both to be scheduled, and rates swing tenfold between rounds.

Writes bench/results/dpo-vs-trl-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def pair_rows(n: int) -> list[dict]:
    """The first n pairs of the quickstart-dpo data (reverse a word: reversal vs echo)."""
    lines = (REPO / "recipes/data/reverse-pairs.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def make_recipe(
    tmp: Path, rows: list[dict], steps: int, micro: int, precompute: bool = False
) -> Path:
    from tune.testing import recipe_dict, write_jsonl, write_recipe

    data = write_jsonl(tmp / "pairs.jsonl", rows)
    recipe = recipe_dict(
        tmp,
        data={
            "format": "preference",
            "train": str(data),
            "template": "llama-3.1",
            "shuffle": False,
        },
        objective={"name": "dpo", "beta": 0.1, "precompute_ref": precompute},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0}],
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
        train={"max_steps": steps, "micro_batch_size": micro, "log_every": 1},
    )
    return write_recipe(tmp, recipe, "pre.toml" if precompute else "recipe.toml")


def step_tokens(recipe_path: Path, steps: int, micro: int) -> list[int]:
    from tune.testing import load_recipe, tokenize

    train = tokenize(load_recipe(recipe_path)).train
    lengths = [len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in train]
    return [sum(lengths[i * micro : (i + 1) * micro]) for i in range(steps)]


def time_tune(recipe_path: Path) -> list[float]:
    """Wall time at the end of each step (seconds since the epoch), from metrics.jsonl."""
    from tune.testing import load_recipe, run

    run(recipe_path, overwrite=True)
    out = Path(load_recipe(recipe_path).train.output_dir)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["time"] for r in map(json.loads, lines) if r["kind"] == "train"]


def time_trl(recipe_path: Path, rows: list[dict], steps: int, micro: int) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed
    from trl import DPOConfig, DPOTrainer
    from tune.testing import build_model, load_recipe

    recipe = load_recipe(recipe_path)
    set_seed(recipe.train.seed)
    model, tokenizer = build_model(recipe, recipe_path.parent / "trl-build")
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.time())

    args = DPOConfig(
        output_dir=str(recipe_path.parent / "trl"),
        per_device_train_batch_size=micro,
        max_steps=steps,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        optim="adamw_torch",
        beta=0.1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        train_sampling_strategy="sequential",
        max_length=None,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[Stamp()],
    )
    trainer.train()
    return stamps


def rate(stamps: list[float], tokens: list[int], warmup: int) -> float:
    """Tokens per second over the steps after `warmup` (step i ends at stamps[i])."""
    return sum(tokens[warmup + 1 :]) / (stamps[-1] - stamps[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import statistics

    import torch
    import trl

    rows = pair_rows(args.steps * args.micro)
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {"tune": [], "trl": [], "tune_pre": []}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        recipe_path = make_recipe(tmp, rows, args.steps, args.micro)
        pre_path = make_recipe(tmp, rows, args.steps, args.micro, precompute=True)
        pre_text = pre_path.read_text().replace(str(tmp / "run"), str(tmp / "run-pre"))
        pre_path.write_text(pre_text)
        tokens = step_tokens(recipe_path, args.steps, args.micro)
        sides = {
            "tune": lambda: time_tune(recipe_path),
            "trl": lambda: time_trl(recipe_path, rows, args.steps, args.micro),
            "tune_pre": lambda: time_tune(pre_path),
        }
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                rates[side].append(rate(sides[side](), tokens, args.warmup))
                print(f"round {r}: {side} {rates[side][-1]:,.0f} tokens/s", flush=True)
    load_after = os.getloadavg()[0]
    tune_rate, trl_rate, pre_rate = (statistics.median(rates[k]) for k in sides)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        "torch threads",
        "torch": torch.__version__,
        "trl": trl.__version__,
        "model": "tune:tiny-llama fp32, LoRA r=8",
        "steps_timed": args.steps - args.warmup - 1,
        "pairs_per_step": args.micro,
        "tokens_per_step": sum(tokens) / len(tokens),
        "tune_tokens_per_s": round(tune_rate, 1),
        "trl_tokens_per_s": round(trl_rate, 1),
        "tune_precompute_ref_tokens_per_s": round(pre_rate, 1),
        "tune_over_trl": round(tune_rate / trl_rate, 3),
        "tune_precompute_ref_over_trl": round(pre_rate / trl_rate, 3),
        "rounds": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
    }
    out = HERE / "results" / f"dpo-vs-trl-{result['date']}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = [
        "# DPO step throughput on CPU: tune vs TRL",
        "",
        f"{result['model']}, {args.micro} pairs a step ({result['tokens_per_step']:.0f} tokens), "
        f"{result['steps_timed']} timed steps after {args.warmup + 1} warm-up steps; "
        f"{result['machine']}; torch {result['torch']}, trl {result['trl']}.",
        f"1-minute load average before / after: {load_before:.1f} / {load_after:.1f} (on a "
        "shared machine, absolute rates are only comparable within one invocation). Medians "
        f"of {args.rounds} rounds, sides alternating; per round: {result['rounds']}.",
        "",
        "| trainer | tokens/s | ratio to TRL |",
        "|---|---:|---:|",
        f"| tune (dpo objective) | {tune_rate:,.0f} | {tune_rate / trl_rate:.2f} |",
        f"| tune, precompute_ref | {pre_rate:,.0f} | {pre_rate / trl_rate:.2f} |",
        f"| TRL DPOTrainer | {trl_rate:,.0f} | 1.00 |",
        "",
        "Command: `python bench/dpo_vs_trl.py "
        f"--steps {args.steps} --warmup {args.warmup} --micro {args.micro} "
        f"--rounds {args.rounds}`",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(table), encoding="utf-8")
    print("\n".join(table))


if __name__ == "__main__":
    main()
