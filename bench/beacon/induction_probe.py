"""When does a plain tiny Llama learn to copy? A bare PyTorch loop, no tune, for comparison.

Rows are either random strings of 8..L characters written twice (`abc|abc.`: only copying
predicts the second half) or short passkey documents. Every 250 steps it prints the loss on the
copied half and on the passkey answer (first digit; digits 2-5); chance is ln 62 = 4.13 and
ln 10 = 2.30. The first `pre` steps are all copy rows, then a share `ind` of each batch.
`init=DIR` starts from a saved model (say a `tune run` stage's final/) and its tokenizer.

    python bench/beacon/induction_probe.py name=a pre=4000 ind=0.25 lr=1e-3 steps=12000  # H100: ~5 min
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes" / "data"))
from make_passkey_docs import copy_text, document  # noqa: E402


def batch(rng: random.Random, step: int, opts: dict, device: str, encode, pad: int):
    """(ids, labels, marks): a mark > 0 is the answer's first char, < 0 minus the copy start."""
    rows, marks = [], []
    for _ in range(opts["B"]):
        if step <= opts["pre"] or rng.random() < opts["ind"]:
            text = copy_text(rng, opts["L"])
            mark = -(len(text) // 2)  # minus the start of the copied half
        else:
            text = document(rng, rng.randint(0, opts["fill"]))["text"]
            mark = len(text) - 6
        rows.append(encode(text))
        marks.append(mark)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), -100)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = labels[i, : len(row)] = torch.tensor(row)
    return ids.to(device), labels.to(device), marks


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def main() -> None:
    opts = {"name": "probe", "lr": 1e-3, "steps": 4000, "B": 32, "fill": 1, "ind": 0.25}
    opts |= {"pre": 0, "L": 64, "seed": 0, "warm": 0, "init": ""}
    for arg in sys.argv[1:]:
        key, value = arg.split("=")
        opts[key] = type(opts[key])(value) if key != "name" else value
    torch.manual_seed(opts["seed"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = LlamaConfig(  # the tune:tiny-llama shape
        hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        vocab_size=266,
    )  # fmt: skip
    model = LlamaForCausalLM(config).to(device)
    encode, pad = (lambda text: list(text.encode())), 256  # byte values as token ids
    if opts["init"]:  # a saved model, e.g. a `tune run` stage's final/: its own byte tokenizer
        from transformers import AutoTokenizer

        model = LlamaForCausalLM.from_pretrained(opts["init"], dtype=torch.float32).to(device)
        tok = AutoTokenizer.from_pretrained(opts["init"])
        encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        pad = tok.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=0.01)
    warm = max(1, opts["warm"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    rng, start, log = random.Random(opts["seed"]), time.time(), []
    for step in range(1, opts["steps"] + 1):
        ids, labels, marks = batch(rng, step, opts, device, encode, pad)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=-100
        )
        loss = nll.sum() / (labels[:, 1:] != -100).sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250:
            continue
        # nll[i, p] scores token p + 1
        answer = [nll[i, m + j].item() for i, m in enumerate(marks) if m > 0 for j in range(4)]
        first = [nll[i, m - 1].item() for i, m in enumerate(marks) if m > 0]
        copied = [nll[i, -m : -2 * m - 2].mean().item() for i, m in enumerate(marks) if m < 0]
        record = {"step": step, "loss": round(loss.item(), 3), "copy_half": mean(copied),
                  "answer_d1": mean(first), "answer_d2_5": mean(answer),
                  "s": round(time.time() - start)}  # fmt: skip
        log.append(record)
        print(opts["name"], record, flush=True)
    Path(f"{opts['name']}.json").write_text(json.dumps(log, indent=1) + "\n")


if __name__ == "__main__":
    main()
