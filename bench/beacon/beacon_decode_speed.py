"""Generation speed of a beacon model with a long prompt: incremental decoding vs re-running
the window.

Before incremental decoding, each new token re-ran its whole partial window (up to w raw tokens
plus w/r beacons) through every layer. Now the window's pre-RoPE KV stays in the beacon state
and only the new token (and a beacon every r tokens) runs. The "recompute" row re-creates the
old way through the public API (the state's window cache is dropped and the window's raw tokens
are run again for every token), so both rows are measured by this one script, alternating, and
their generated tokens are checked equal.

    python bench/beacon/beacon_decode_speed.py [--prompt 16384 --new 64 --window 1024 --ratio 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent  # bench/
sys.path.insert(0, str(HERE.parent / "plugins" / "beacon"))


def build(window: int, ratio: int, pos: str, layers: int, hidden: int):
    from transformers import AutoModelForCausalLM
    from tune.builtin.tiny import materialize
    from tune_plugin_beacon.model import BeaconConfig, attach

    overrides = {
        "hidden_size": hidden,
        "intermediate_size": hidden * 3,
        "num_hidden_layers": layers,
        "max_position_embeddings": 4096,
    }
    base = AutoModelForCausalLM.from_pretrained(
        str(materialize("tiny-llama", overrides, 0)), dtype=torch.float32
    )
    cfg = BeaconConfig(window=window, ratios=[ratio], inference_ratio=ratio, pos=pos)
    return attach(base.eval(), cfg)


@torch.no_grad()
def decode(model, prompt: torch.Tensor, new: int, recompute: bool) -> tuple[list[int], float]:
    """Greedy tokens after `prompt` and the seconds the `new` decoding steps took (prefill
    excluded: it is the same work both ways)."""
    out = model(input_ids=prompt)
    state, tokens = out.beacon_state, []
    window_ids = prompt[:, prompt.shape[1] - state.window_raw :]
    logits = out.logits[:, -1]
    start = time.perf_counter()
    for _ in range(new):
        nxt = logits.argmax(-1, keepdim=True)
        tokens.append(int(nxt))
        if recompute:  # the old way: the partial window's raw tokens run again with the new one
            before = copy.copy(state)
            before.window_k = before.window_v = None
            before.window_raw = 0
            if state.window_raw:
                before.ratio = state.window_ratio
            window_ids = torch.cat([window_ids, nxt], dim=1)
            out = model(input_ids=window_ids, beacon_state=before)
            if out.beacon_state.window_raw == 0:
                window_ids = window_ids[:, :0]
        else:
            out = model(input_ids=nxt, beacon_state=state)
        state, logits = out.beacon_state, out.logits[:, -1]
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=16000)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--ratio", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per mode")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "beacon")
    args = parser.parse_args()

    ids = torch.randint(10, 250, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for pos in ("interleave", "append"):
        model = build(args.window, args.ratio, pos, args.layers, args.hidden)
        times: dict[str, list[float]] = {"recompute": [], "incremental": []}
        outputs = {}
        for _ in range(args.rounds):
            for mode in times:
                tokens, seconds = decode(model, ids, args.new, mode == "recompute")
                times[mode].append(seconds)
                outputs[mode] = tokens
        if outputs["recompute"] != outputs["incremental"]:
            raise SystemExit(f"{pos}: the two ways generated different tokens")
        best = {mode: min(t) for mode, t in times.items()}
        rows.append(
            {
                "pos": pos,
                "recompute_tokens_per_s": args.new / best["recompute"],
                "incremental_tokens_per_s": args.new / best["incremental"],
                "speedup": best["recompute"] / best["incremental"],
                "same_tokens": True,
            }
        )
        print(rows[-1], flush=True)
    write(args, rows)


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    import transformers

    date = time.strftime("%Y-%m-%d")
    result = {
        "date": date,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch threads "
        f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "command": "python bench/beacon/beacon_decode_speed.py " + " ".join(sys.argv[1:]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"beacon-decode-speed-{date}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Beacon generation speed with a {args.prompt:,}-token prompt, {date}",
        "",
        f"`{result['command']}` on {result['machine']}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, fp32 CPU.",
        "",
        f"Random-init Llama ({args.layers} layers, hidden {args.hidden}), window {args.window}, "
        f"ratio {args.ratio}; greedy, {args.new} new tokens after the prompt (prefill excluded); "
        f"best of {args.rounds} alternating rounds; both ways generated the same tokens.",
        "",
        "| placement | re-run the window (before) tokens/s | incremental (now) tokens/s | speed-up |",
        "|---|---:|---:|---:|",
        *[
            f"| {r['pos']} | {r['recompute_tokens_per_s']:.1f} | "
            f"{r['incremental_tokens_per_s']:.1f} | {r['speedup']:.1f}x |"
            for r in rows
        ],
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
