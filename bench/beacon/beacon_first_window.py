"""Where each beacon placement leaves the base model's own outputs unchanged.

Before any training, a beacon model should reproduce its base wherever no memory is involved,
or the base's skills (copying inside a window, answering) are disturbed from the first step. This
attaches beacons as they start (projections copied from the attention's) to a base model and
compares its logits with the base's on the same tokens: the first window (no memory yet) and
the later windows (memory of the earlier ones), for every placement x mask.

    python bench/beacon/beacon_first_window.py [--base PATH] [--window 128] [--ratio 2]

Without --base it uses tune:tiny-llama (random init; the figures then show structure, not
skill). Writes bench/results/beacon/beacon-first-window-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent  # bench/
PLACEMENTS = [
    (pos, attn) for pos in ("interleave", "append") for attn in ("full-coverage", "step-expansion")
]


def main() -> None:
    from transformers import AutoModelForCausalLM
    from tune.testing import tiny_model
    from tune_plugin_beacon.model import BeaconConfig, attach

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="a model folder (default: tune:tiny-llama)")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--ratio", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "beacon"))
    args = parser.parse_args()
    path = args.base or str(tiny_model("tiny-llama", {}))
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    vocab = base.config.vocab_size
    ids = torch.randint(3, vocab, (1, 3 * args.window), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = base(input_ids=ids).logits
    rows = []
    for pos, attn in PLACEMENTS:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        cfg = BeaconConfig(
            window=args.window,
            ratios=[args.ratio],
            inference_ratio=args.ratio,
            pos=pos,
            attn=attn,
            sink_size=0,
        )
        model = attach(model, cfg)
        with torch.no_grad():
            got = model(input_ids=ids).logits
        diff = (got - want).abs().amax(-1)[0]
        first = diff[: args.window]
        bad = (first > 1e-4).nonzero()
        rows.append(
            {
                "placement": f"{pos} + {attn}",
                "first_window_max": float(first.max()),
                "first_deviation": int(bad[0]) if len(bad) else None,
                "later_windows_max": float(diff[args.window :].max()),
            }
        )
        print(rows[-1], flush=True)
    write(rows, args, path)


def write(rows: list[dict], args, path: str) -> None:
    date = datetime.date.today().isoformat()
    lines = [
        f"# Beacon placements against their base, before training ({date})",
        "",
        f"Base: `{args.base or 'tune:tiny-llama'}`; window {args.window}, ratio {args.ratio}, "
        f"sink 0; 3 windows of random tokens; beacons as attached (projections copied from the "
        f"attention's). Command: `python bench/beacon/beacon_first_window.py"
        f"{' --base ' + args.base if args.base else ''} --window {args.window} "
        f"--ratio {args.ratio}`.",
        "",
        "| placement | max logit difference, first window | first token that differs "
        "(> 1e-4) | max logit difference, later windows |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        first = "-" if r["first_deviation"] is None else str(r["first_deviation"])
        lines.append(
            f"| {r['placement']} | {r['first_window_max']:.2e} | {first} | "
            f"{r['later_windows_max']:.2e} |"
        )
    lines += [
        "",
        "Reading: in the first window no token has memory to use, so any difference there is "
        "the beacons' own disturbance of the base. With interleave + full-coverage the raw "
        "tokens attend to the current window's beacons (plain causal over the interleaved "
        "sequence, as the reference lays it out), so the base's outputs change from the "
        "third token on; the other three placements leave the first window as the base has it "
        "(differences at float rounding) and change only what the memory reaches.",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"beacon-first-window-{date}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
