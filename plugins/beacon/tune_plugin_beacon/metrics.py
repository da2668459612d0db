"""Long-context evaluation the Activation Beacon authors use: passkey retrieval, long perplexity."""

from __future__ import annotations

import math
import random
from typing import Any

import torch
from tune.plugin import greedy_generate, text_prompt

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there. "
)


def passkey_prompt(tokenizer: Any, length: int, depth: float, key: str) -> str:
    """About `length` tokens of filler with the key sentence at `depth` (0 = start, 1 = end)."""
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    question = "What is the pass key? The pass key is"
    budget = length - len(
        tokenizer(INTRO + needle + question, add_special_tokens=False)["input_ids"]
    )
    per_filler = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    n = max(1, budget // per_filler)
    before = round(n * depth)
    return INTRO + FILLER * before + needle + FILLER * (n - before) + question


def passkey(model: Any, data: Any, settings: Any, ctx: Any) -> dict[str, float]:
    """Share of keys reproduced exactly (and digit accuracy) per length, plus the overall."""
    tokenizer = data.tokenizer
    rng = random.Random(settings.seed)
    results: dict[str, float] = {}
    exact_all, digits_all, count_all = 0, 0, 0
    for length in settings.lengths:
        exact = digits = count = 0
        for depth in settings.depths:
            for _ in range(settings.trials):
                key = f"{rng.randrange(10**5):05d}"
                prompt = passkey_prompt(tokenizer, length, depth, key)
                text = greedy_generate(
                    model,
                    tokenizer,
                    text_prompt(tokenizer, prompt),
                    8,
                    device=data.device,
                    autocast=data.autocast(),
                ).strip()
                got = "".join(ch for ch in text if ch.isdigit())[:5]
                exact += got == key
                digits += sum(a == b for a, b in zip(got, key, strict=False))  # got may be short
                count += 1
        results[f"passkey@{length}"] = exact / count
        results[f"passkey_digits@{length}"] = digits / (5 * count)
        exact_all, digits_all, count_all = exact_all + exact, digits_all + digits, count_all + count
    results["passkey"] = exact_all / count_all
    results["passkey_digits"] = digits_all / (5 * count_all)
    return results


def long_ppl(model: Any, data: Any, settings: Any) -> dict[str, float]:
    """Perplexity of eval targets grouped by position: does quality hold deep into the context?"""
    edges = sorted(settings.buckets)
    loss_sum = [0.0] * len(edges)
    tokens = [0] * len(edges)
    for example in data.examples:
        ids = torch.tensor([example["input_ids"]], device=data.device)
        labels = torch.tensor(example["labels"], device=data.device)
        if int((labels[1:] != -100).sum()) == 0:
            continue
        with torch.no_grad(), data.autocast():
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        targets = labels[1:]
        losses = torch.nn.functional.cross_entropy(
            logits, targets, ignore_index=-100, reduction="none"
        )
        positions = torch.arange(1, ids.shape[1], device=data.device)
        low = 0
        for b, edge in enumerate(edges):
            sel = (positions > low) & (positions <= edge) & (targets != -100)
            loss_sum[b] += float(losses[sel].sum())
            tokens[b] += int(sel.sum())
            low = edge
    out = {}
    low = 0
    for b, edge in enumerate(edges):
        reduce = data.collectives.all_reduce_sum
        total_loss, total_tokens = reduce(loss_sum[b]), reduce(tokens[b])
        if total_tokens:
            out[f"long_ppl@{low + 1}-{edge}"] = math.exp(min(total_loss / total_tokens, 50.0))
        low = edge
    return out
