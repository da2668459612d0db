"""Passkey retrieval of a tiny beacon model trained on synthetic passkey documents (CPU).

Trains `recipes/longctx-tiny.toml` (tiny Llama + Activation Beacon) on freshly generated
passkey documents with `tune run`, then reports
- the `passkey` metric (exact keys and digit accuracy; chance is 10% per digit), and
- where a failure comes from: the model's loss on the key digits that can only be copied
  from inside the current window (the key's second mention, digits 2-5) and on the answer
  (copied through beacon memory), against ln 10 = 2.303 nats for a guess. A model that cannot
  copy inside a window (no induction yet) cannot retrieve through beacons either.

    python bench/beacon_passkey.py [--steps 300] [--docs 600] [--fillers 1 6] [--asks 1]
                                   [--ratios 2] [-o key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUESTION = "What is the pass key? The pass key is "


def copy_losses(run_dir: Path, docs: Path, n: int = 16) -> dict[str, float]:
    """Mean loss (nats) on: the key's first mention (unpredictable), digits 2-5 of its second
    mention (copy within a window), the answer (copy across windows through beacons)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO / "plugins" / "beacon"))
    from tune_plugin_beacon import load_beacon

    final = run_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    model = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.float32).eval()
    load_beacon(model, final)
    sums = {"first_mention": 0.0, "second_mention_copy": 0.0, "answer": 0.0}
    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines()[:n]]
    for text in texts:
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != len(text) + 1:
            raise SystemExit("the diagnostic expects a byte-level tokenizer (one token per char)")
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        nll = -torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        key = text.split("The pass key is ")[1][:5]
        first = text.index(key)
        second = text.index(key, first + 5)
        answer = text.index(QUESTION) + len(QUESTION)
        # nll[i] scores token i + 1 = character i of the text
        sums["first_mention"] += float(nll[first : first + 5].mean())
        sums["second_mention_copy"] += float(nll[second + 1 : second + 5].mean())
        sums["answer"] += float(nll[answer : answer + 5].mean())
    return {k: v / len(texts) for k, v in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--docs", type=int, default=600, help="training documents")
    parser.add_argument("--fillers", type=int, nargs=2, default=(1, 6), metavar=("MIN", "MAX"))
    parser.add_argument("--asks", type=int, default=1, help="questions per training document")
    parser.add_argument("--ratios", type=int, nargs="+", default=[2])
    parser.add_argument("-o", "--override", action="append", default=[], dest="overrides")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="beacon-passkey-"))
    subprocess.run(
        [sys.executable, str(REPO / "recipes/data/make_passkey_docs.py"), "--out", str(work),
         "--count", str(args.docs), "--fillers", *map(str, args.fillers),
         "--asks", str(args.asks), "--seed", "1"],
        check=True,
    )  # fmt: skip
    overrides = [
        f"data.train={json.dumps(str(work / 'passkey-train.jsonl'))}",
        f"data.eval={json.dumps(str(work / 'passkey-eval.jsonl'))}",
        f"train.output_dir={json.dumps(str(work / 'run'))}",
        f"train.max_steps={args.steps}",
        f"adapt.0.ratios={json.dumps(args.ratios)}",
        f"adapt.0.inference_ratio={min(r for r in args.ratios if r > 0)}",
        "eval.passkey.lengths=[512,1024]",
        "eval.passkey.depths=[0.2,0.5,0.8]",
        "eval.passkey.trials=4",
        "train.log_every=50",
        *args.overrides,
    ]
    command = [sys.executable, "-m", "tune", "run", "recipes/longctx-tiny.toml"]
    for item in overrides:
        command += ["-o", item]
    env = {**os.environ, "TUNE_CACHE": str(work / "cache")}
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env=env)
    wall = time.perf_counter() - start
    summary = json.loads((work / "run" / "summary.json").read_text())
    losses = copy_losses(work / "run", work / "passkey-train.jsonl")

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch threads "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}",
        "settings": vars(args) | {"out": str(args.out)},
        "wall_s": round(wall, 1),
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
        "eval": summary["eval"],
        "copy_losses_nats": losses,
        "guess_nats": math.log(10),
    }
    stamp = result["date"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"beacon-passkey-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    ev = summary["eval"]
    lines = [
        f"# Passkey retrieval of a tiny beacon model, {stamp}",
        "",
        f"`python bench/beacon_passkey.py {' '.join(sys.argv[1:])}` on {result['machine']}; "
        f"{args.steps} steps, {args.docs} documents of {args.fillers[0]}-{args.fillers[1]} "
        f"fillers, ratios {args.ratios}; {wall:.0f} s.",
        "",
        "| length | exact keys | digit accuracy (chance 0.10) |",
        "|---|---|---|",
        *[
            f"| {k.split('@')[1]} | {ev[k]:.2f} | {ev['passkey_digits@' + k.split('@')[1]]:.2f} |"
            for k in ev
            if k.startswith("passkey@")
        ],
        "",
        f"Loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}. Mean loss on key "
        f"digits (nats; a guess is ln 10 = {math.log(10):.3f}):",
        "",
        "| key digits | loss |",
        "|---|---|",
        *[f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in losses.items()],
        "",
    ]
    (args.out / f"beacon-passkey-{stamp}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
