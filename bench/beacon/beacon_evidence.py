"""Passkey retrieval of trained beacon models at true token lengths, with intervals, and a memory
ablation that shows whether the beacons' memory is what carries the key.

Input: finished beacon runs (their `final/` folders, e.g. from `bench/beacon/beacon_passkey.py --work`)
and optionally the base they started from (evaluated with full attention). Prompts are built to
a target token count with whole filler paragraphs (the tiny models use a byte-level tokenizer: one
token per character, plus BOS; tables give the true length); the key sentence sits at a set depth of the filler. Every (length, depth) cell has
`--trials` keys; accuracies come with 95% Wilson intervals.

Ablation (on prompts whose key lies in the completed windows before the question's window): the
prompt's completed windows are read, then before the rest (the question) is read, the memory is
(a) left alone, (b) zeroed, (c) dropped, or (d) replaced by the memory of a donor prompt that is
the same text with another key. If the memory carries the key, (b) and (c) fall to chance and
(d) answers the donor's key.

    python bench/beacon/beacon_evidence.py --run interleave-s0=/tmp/bp/beacon/final ... \\
        --base /tmp/bp/retrieve/final --lengths 384 640 1024 --trials 50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent  # bench/
REPO = HERE.parent
sys.path.insert(0, str(REPO / "recipes" / "data"))
from make_passkey_docs import FILLER, INTRO, QUESTION  # noqa: E402

CHANCE_DIGIT = 0.1


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def prompt_text(length: int, depth: float, key: str) -> str:
    """A prompt of at most `length` tokens with BOS (byte-level: one token per character), as
    the training documents are built: the intro, whole filler paragraphs with the key sentence
    between the two nearest `depth`, the question. The tables report the true length."""
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    room = length - 1 - len(INTRO) - len(needle) - len(QUESTION)
    if room < len(FILLER):
        raise ValueError(f"length {length} is too short for the passkey prompt")
    n = room // len(FILLER)
    before = round(depth * n)
    return INTRO + FILLER * before + needle + FILLER * (n - before) + QUESTION


def key_end(text: str, key: str) -> int:
    """Index just past the key sentence (where the key's last mention ends)."""
    return text.index(f"{key} is the pass key.") + len(f"{key} is the pass key.")


def encode(tokenizer, text: str) -> torch.Tensor:
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids])


@torch.no_grad()
def answer(model, ids: torch.Tensor, tokenizer, state=None, beacon: bool = True) -> str:
    """Greedy continuation (6 tokens: the space and the five digits) as digits."""
    out = model(input_ids=ids, beacon_state=state) if beacon else model(input_ids=ids)
    tokens = []
    for _ in range(6):
        nxt = out.logits[:, -1:].argmax(-1)
        tokens.append(int(nxt))
        if beacon:
            out = model(input_ids=nxt, beacon_state=out.beacon_state)
        else:
            ids = torch.cat([ids, nxt], dim=1)
            out = model(input_ids=ids)
    text = tokenizer.decode(tokens)
    return "".join(ch for ch in text if ch.isdigit())[:5]


def score(got: str, key: str) -> tuple[int, int]:
    return int(got == key), sum(a == b for a, b in zip(got, key, strict=False))


def load(final: Path):
    from transformers.utils import logging as hf_logging
    from tune.registry.manager import get_plugin_manager
    from tune.trained.merge import load_trained, locate

    hf_logging.set_verbosity_error()
    pm = get_plugin_manager()
    adapter, _, recipe = locate(final, pm)
    model, tokenizer = load_trained(adapter, recipe, pm, "fp32")
    return model.eval(), tokenizer


def passkey_table(model, tokenizer, lengths, depths, trials, seed, beacon=True) -> list[dict]:
    rows = []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"{seed}-{length}-{depth}")
            exact = digits = 0
            for _ in range(trials):
                key = f"{rng.randrange(10**5):05d}"
                ids = encode(tokenizer, prompt_text(length, depth, key))
                true_length = ids.shape[1]
                e, d = score(answer(model, ids, tokenizer, beacon=beacon), key)
                exact, digits = exact + e, digits + d
            rows.append(
                {
                    "length": length,
                    "tokens": true_length,
                    "depth": depth,
                    "trials": trials,
                    "exact": exact,
                    "digits": digits,
                    "exact_ci": wilson(exact, trials),
                    "digit_acc": digits / (5 * trials),
                    "digit_ci": wilson(digits, 5 * trials),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


@torch.no_grad()
def ablation(model, tokenizer, length: int, depths, trials: int, seed: int) -> dict:
    """Own-key and donor-key answer rates when the memory is kept, zeroed, dropped or spliced."""
    from tune_plugin_beacon.model import BeaconState, find_beacon_model

    inner = find_beacon_model(model)
    window = inner.beacon_config.window
    counts = {m: {"own": 0, "donor": 0, "own_digits": 0, "donor_digits": 0, "n": 0} for m in MODES}
    rng = random.Random(f"ablation-{seed}")
    used = 0
    while used < trials * len(depths):
        depth = depths[used % len(depths)]
        key, donor_key = (f"{rng.randrange(10**5):05d}" for _ in range(2))
        if key[0] == donor_key[0]:
            continue  # keys that differ from the first digit on tell own from donor answers
        text = prompt_text(length, depth, key)
        donor_text = text.replace(key, donor_key)
        split = (
            (text.rindex(QUESTION) + 1) // window * window
        )  # completed windows before the question
        if key_end(text, key) + 1 > split:
            raise SystemExit(f"depth {depth} puts the key in the question's window at {length}")
        ids, donor_ids = encode(tokenizer, text), encode(tokenizer, donor_text)
        for mode in MODES:
            head = model(input_ids=ids[:, :split]).beacon_state
            if mode == "donor":
                head = model(input_ids=donor_ids[:, :split]).beacon_state
            elif mode == "zeroed":
                head.memory_k = [torch.zeros_like(k) for k in head.memory_k]
                head.memory_v = [torch.zeros_like(v) for v in head.memory_v]
            elif mode == "dropped":
                fresh = BeaconState.empty(len(head.memory_k))
                fresh.ratio, fresh.seen = head.ratio, head.seen
                head = fresh
            got = answer(model, ids[:, split:], tokenizer, state=head)
            c = counts[mode]
            c["n"] += 1
            c["own"] += got == key
            c["donor"] += got == donor_key
            c["own_digits"] += score(got, key)[1]
            c["donor_digits"] += score(got, donor_key)[1]
        used += 1
    for c in counts.values():
        n = c["n"]
        c["own_ci"], c["donor_ci"] = wilson(c["own"], n), wilson(c["donor"], n)
        c["own_digit_acc"], c["donor_digit_acc"] = (
            c["own_digits"] / (5 * n),
            c["donor_digits"] / (5 * n),
        )
    print(json.dumps(counts), flush=True)
    return counts


MODES = ("kept", "zeroed", "dropped", "donor")


def fmt_ci(lo_hi) -> str:
    return f"[{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="NAME=FINAL_DIR (repeatable)")
    parser.add_argument("--base", type=Path, help="the base's final/ (full attention rows)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[384, 640, 1024])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--ablate", action="append", default=[], help="NAME of a --run to ablate")
    parser.add_argument("--ablation-length", type=int, default=640)
    parser.add_argument("--ablation-depths", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--seed", type=int, default=0, help="prompt/key seed")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "beacon")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    torch.manual_seed(0)

    result: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "versions": {"torch": torch.__version__},
        "command": "python bench/beacon/beacon_evidence.py " + " ".join(sys.argv[1:]),
        "passkey": {},
        "ablation": {},
    }
    if args.base:
        model, tokenizer = load(args.base)
        result["passkey"]["base (full attention)"] = passkey_table(
            model, tokenizer, args.lengths, args.depths, args.trials, args.seed, beacon=False
        )
    for item in args.run:
        name, final = item.split("=", 1)
        model, tokenizer = load(Path(final))
        result["passkey"][name] = passkey_table(
            model, tokenizer, args.lengths, args.depths, args.trials, args.seed
        )
        if name in args.ablate:
            result["ablation"][name] = ablation(
                model, tokenizer, args.ablation_length, args.ablation_depths, args.trials, args.seed
            )
    write(args, result)


def write(args: argparse.Namespace, result: dict) -> None:
    stem = args.out / f"beacon-evidence-{result['date']}{'-' + args.tag if args.tag else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Beacon passkey evidence, {result['date']}",
        "",
        f"`{result['command']}` on {result['machine']}, torch {torch.__version__}.",
        "",
        f"Tokens: the prompts' true length (BOS included, whole filler paragraphs up to the "
        f"targets {args.lengths}); {args.trials} keys per cell; "
        "95% Wilson intervals; chance is 0.10 per digit and 1e-5 per exact key.",
        "",
        "| model | tokens | depth | exact keys | 95% CI | digit accuracy | 95% CI |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for name, rows in result["passkey"].items():
        for r in rows:
            lines.append(
                f"| {name} | {r['tokens']} | {r['depth']} | {r['exact']}/{r['trials']} | "
                f"{fmt_ci(r['exact_ci'])} | {r['digit_acc']:.2f} | {fmt_ci(r['digit_ci'])} |"
            )
    if result["ablation"]:
        lines += [
            "",
            f"Memory ablation at {args.ablation_length} tokens (key in the completed windows, "
            f"depths {args.ablation_depths}): answers that are the prompt's own key or the "
            "donor's key.",
            "",
            "| model | memory | own key | 95% CI | donor key | 95% CI | own digits | donor digits |",
            "|---|---|---:|---|---:|---|---:|---:|",
        ]
        for name, counts in result["ablation"].items():
            for mode, c in counts.items():
                lines.append(
                    f"| {name} | {mode} | {c['own']}/{c['n']} | {fmt_ci(c['own_ci'])} | "
                    f"{c['donor']}/{c['n']} | {fmt_ci(c['donor_ci'])} | "
                    f"{c['own_digit_acc']:.2f} | {c['donor_digit_acc']:.2f} |"
                )
    lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
