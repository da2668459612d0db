"""Peak memory and time of one forward+backward: Activation Beacon vs full attention.

Tiny Llama (tune:tiny-llama, fp32, CPU), one sequence of N tokens, loss on every token.
Each configuration runs in its own process so peak RSS is its own; the figure reported is the
peak RSS during forward+backward minus the RSS just before it (model and imports excluded).

    python bench/beacon/beacon_memory.py [--lengths 2048 4096 8192 16384]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # bench/
MODES = {
    "full attention (sdpa)": {"attn": "sdpa"},
    "full attention (eager)": {"attn": "eager"},
    "beacon w=1024 r=8": {"attn": "sdpa", "beacon": {"window": 1024, "ratio": 8}},
    "full attention (sdpa) + checkpointing": {"attn": "sdpa", "ckpt": True},
    "beacon w=1024 r=8 + checkpointing": {
        "attn": "sdpa",
        "ckpt": True,
        "beacon": {"window": 1024, "ratio": 8},
    },
}

CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, sys.argv[3])
from transformers import AutoModelForCausalLM
from tune.builtin.tiny import materialize
spec, n = json.loads(sys.argv[1]), int(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(str(materialize("tiny-llama", {"max_position_embeddings": 32768}, 0)),
                                             dtype=torch.float32, attn_implementation=spec["attn"])
if "beacon" in spec:
    from tune_plugin_beacon.model import BeaconConfig, attach
    b = spec["beacon"]
    attach(model, BeaconConfig(window=b["window"], ratios=[b["ratio"]], ratio_mix="fixed"))
if spec.get("ckpt"):
    model.gradient_checkpointing_enable({"use_reentrant": False})
model.train()
ids = torch.randint(10, 250, (1, n), generator=torch.Generator().manual_seed(0))
kwargs = {} if "beacon" in spec else {"use_cache": False}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
model(input_ids=ids, labels=ids, **kwargs).loss.backward()
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_peak_mib": (peak - before) / 1024, "seconds": elapsed}))
"""


def measure(spec: dict, n: int) -> dict:
    plugin_dir = str(HERE.parent / "plugins" / "beacon")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec), str(n), plugin_dir],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        killed = out.returncode < 0 or "Killed" in out.stderr or "MemoryError" in out.stderr
        return {
            "error": "out of memory (24 GiB machine)"
            if killed or not out.stdout
            else out.stderr[-200:]
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "beacon")
    args = parser.parse_args()
    import torch

    rows = []
    for n in args.lengths:
        for name, spec in MODES.items():
            result = measure(spec, n)
            rows.append({"tokens": n, "mode": name, **result})
            print(json.dumps(rows[-1]), flush=True)
    date = time.strftime("%Y-%m-%d")
    record = {
        "date": date,
        "command": "python bench/beacon/beacon_memory.py --lengths "
        + " ".join(map(str, args.lengths)),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": "tune:tiny-llama (4 layers, hidden 128, fp32), batch 1, forward+backward",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"beacon-memory-{date}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Activation Beacon vs full attention: memory and time ({date})",
        "",
        f"Command: `{record['command']}`  ",
        f"Machine: {record['machine']}  ",
        f"Model: {record['model']}. Extra peak RSS = peak during forward+backward minus RSS before it.",
        "",
        "| tokens | mode | extra peak MiB | seconds |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tokens']} | {r['mode']} | failed: {r['error']} | |")
        else:
            lines.append(
                f"| {r['tokens']} | {r['mode']} | {r['extra_peak_mib']:.0f} | {r['seconds']:.2f} |"
            )
    (args.out / f"beacon-memory-{date}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
