"""Training throughput with padding-free packing vs padded batches, measured in one run.

Same data (real chat-length mix), same tiny model, same token budget per micro-batch
(micro_batch_size x max_seq_len), one epoch each; reports real tokens/s, wall time, the
ratio, and the batching efficiency. CPU, tiny Llama: the ratio is what matters, not the
absolute numbers.

    python bench/packing.py [--data ../shared/data/alpaca_en_demo.json] [--rows 400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "alpaca_en_demo.json"
KEYS = ("steps", "tokens", "tokens_per_s", "wall_s", "token_efficiency", "plan_efficiency")


def run(data_path: Path, rows: int, pack: bool, workdir: Path) -> dict:
    from tune.recipe import dump_toml, load_recipe
    from tune.registry.manager import get_plugin_manager
    from tune.train.run import run_training

    subset = workdir / "data.json"
    if not subset.exists():
        subset.write_text(json.dumps(json.loads(data_path.read_text())[:rows]))
    recipe = {
        "model": {"path": "tune:tiny-llama", "max_seq_len": 1024},
        "data": {
            "format": "alpaca",
            "train": str(subset),
            "template": "llama-3.1",
            "pack": pack,
            "shuffle": True,
        },
        "optimizer": {"lr": 1e-3},
        "scheduler": {"name": "constant"},
        "train": {
            "output_dir": str(workdir / ("packed" if pack else "padded")),
            "epochs": 1,
            "micro_batch_size": 4,
            "precision": "fp32",
            "log_every": 10_000,
        },
        "eval": {"metrics": []},
    }
    path = workdir / f"{'packed' if pack else 'padded'}.toml"
    path.write_text(dump_toml(recipe))
    pm = get_plugin_manager()
    start = time.perf_counter()
    summary = run_training(load_recipe(path, plugins=pm), pm)
    summary["outer_wall_s"] = round(time.perf_counter() - start, 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"data not found: {args.data} (pass --data with an alpaca-format .json file)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        padded = run(args.data, args.rows, False, Path(tmp))
        packed = run(args.data, args.rows, True, Path(tmp))
    import torch

    ratio = packed["tokens_per_s"] / padded["tokens_per_s"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": f"python bench/packing.py --data {args.data.name} --rows {args.rows}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}",
        "data": f"{args.data.name}, first {args.rows} rows, alpaca format, llama-3.1 template, byte-level tiny tokenizer",
        **{name: {k: r[k] for k in KEYS} for name, r in (("padded", padded), ("packed", packed))},
        "tokens_per_s_ratio_packed_over_padded": round(ratio, 3),
        "wall_time_ratio_padded_over_packed": round(padded["wall_s"] / packed["wall_s"], 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"packing-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Packing vs padded batches ({result['date']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Data: {result['data']}. Same token budget per micro-batch (4 x 1024), one epoch each.",
        "",
        "| batching | steps | real tokens | tokens/s | wall s | real tokens / computed positions | plan efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("padded", "packed"):
        r = result[name]
        lines.append(
            f"| {name} | {r['steps']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['wall_s']} | "
            f"{100 * r['token_efficiency']:.1f}% | {100 * r['plan_efficiency']:.1f}% |"
        )
    lines += [
        "",
        f"**Packed / padded tokens/s: {result['tokens_per_s_ratio_packed_over_padded']}x**; "
        f"padded / packed wall time: {result['wall_time_ratio_padded_over_packed']}x.",
        "",
        "Plan efficiency: packed = how full the max_seq_len bins are; padded = real tokens over the",
        "padded positions of the planned micro-batches.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
