"""Example plugin: the metric `token_accuracy` (greedy next-token accuracy on eval targets).

What a plugin needs: a module with `@hookimpl` functions, declared under the entry point group
`tune`. Keep the module import light (no torch at the top): `tune plugins list` imports it.
"""

from __future__ import annotations

from pydantic import Field
from tune.plugin import Settings, hookimpl


class TokenAccuracySettings(Settings):
    """Recipe keys of `[eval.token_accuracy]`; unknown keys are rejected by tune."""

    top_k: int = Field(1, ge=1, description="count a hit when the target is in the top k")


@hookimpl
def tune_provide(provide):
    provide.metric(
        "token_accuracy", TokenAccuracySettings, doc="share of eval target tokens predicted (top-k)"
    )


@hookimpl
def tune_evaluate(names, settings, model, data, ctx):
    if "token_accuracy" not in names:
        return None
    import torch

    settings = settings["token_accuracy"]
    hits, total = 0, 0
    with torch.no_grad():
        for batch in data.batches():
            with data.autocast():
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            targets = batch["labels"][:, 1:]
            mask = targets != -100
            top = logits[:, :-1].topk(settings.top_k, dim=-1).indices
            hit = (top == targets.unsqueeze(-1)).any(-1) & mask
            hits += int(hit.sum())
            total += int(mask.sum())
    hits, total = data.reduce_sum(hits), data.reduce_sum(total)
    return {f"token_accuracy@{settings.top_k}": hits / total} if total else {}
