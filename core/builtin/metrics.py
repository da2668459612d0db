"""Metric `perplexity`: mean next-token loss over the eval set's target tokens, and exp of it."""

from __future__ import annotations

import math

from tune.plugin import Capabilities, hookimpl


@hookimpl
def tune_provide(provide):
    provide.metric(
        "perplexity",
        doc="eval_loss and perplexity over eval target tokens",
        capabilities=Capabilities(
            scores=("lm",), why={"scores": "it scores the next-token loss of lm examples"}
        ),
    )


@hookimpl
def tune_evaluate(names, model, data, ctx):
    if "perplexity" not in names:
        return None
    import torch

    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for batch in data.batches():
            n = int((batch["labels"][:, 1:] != -100).sum())
            if n == 0:
                continue
            with data.autocast():
                out = model(**batch, use_cache=False, num_items_in_batch=1)  # sum over tokens
            total_loss += float(out.loss)
            total_tokens += n
    total_loss = data.collectives.all_reduce_sum(total_loss)
    total_tokens = data.collectives.all_reduce_sum(total_tokens)
    if total_tokens == 0:
        return {}
    loss = total_loss / total_tokens
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
