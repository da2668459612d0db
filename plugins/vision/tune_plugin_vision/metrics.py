"""Metrics of vision examples: `vision_perplexity` (eval_loss and perplexity over the reply
tokens) and `answer_accuracy` (share of eval examples whose every reply token is the model's
greedy choice, which is exactly when greedy decoding reproduces the reply)."""

from __future__ import annotations

import math
from typing import Any

from tune.plugin import IGNORE


def evaluate(names: list[str], model: Any, data: Any) -> dict[str, float]:
    import torch

    loss_sum, tokens, right, answered = 0.0, 0, 0, 0
    with torch.no_grad():
        for batch in data.batches():
            labels = batch["labels"]
            targets = labels[:, 1:]
            mask = targets != IGNORE
            if not bool(mask.any()):
                continue
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with data.autocast():
                logits = model(**inputs, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            loss_sum += float(nll)
            tokens += int(mask.sum())
            hit = (logits.argmax(-1) == targets) | ~mask
            has = mask.any(-1)
            right += int((hit.all(-1) & has).sum())
            answered += int(has.sum())
    c = data.collectives
    loss_sum, tokens = c.all_reduce_sum(loss_sum), c.all_reduce_sum(tokens)
    right, answered = c.all_reduce_sum(right), c.all_reduce_sum(answered)
    out: dict[str, float] = {}
    if "vision_perplexity" in names and tokens:
        loss = loss_sum / tokens
        out.update(eval_loss=loss, perplexity=math.exp(min(loss, 50.0)))
    if "answer_accuracy" in names and answered:
        out["answer_accuracy"] = right / answered
    return out
