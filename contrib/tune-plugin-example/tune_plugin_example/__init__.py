"""Metric `token_accuracy`: the share of eval target tokens the model predicts (top-k).

A tune plugin (`tune-plugin-example`). Import nothing heavy at the top: `tune plugins list` imports it.
"""

from __future__ import annotations

from pydantic import Field
from tune.plugin import LM_EXAMPLES, Capabilities, Settings, hookimpl

TUNE_API = ">=2,<3"  # the tune plugin API versions this plugin was built for


class TokenAccuracySettings(Settings):
    """Keys of `[eval.token_accuracy]`; unknown keys are rejected by tune."""

    top_k: int = Field(1, ge=1, description="count a hit when the target is in the top k")


@hookimpl
def tune_provide(provide):
    provide.metric(
        "token_accuracy",
        TokenAccuracySettings,
        doc="share of eval target tokens predicted (top-k)",
        # it reads next-token targets off `labels`: causal-LM examples (not preference pairs)
        capabilities=Capabilities(scores=(LM_EXAMPLES,)),
    )


@hookimpl
def tune_evaluate(names, settings, model, data, ctx):
    """At each eval point: this rank's batches, summed over ranks with data.collectives."""
    if "token_accuracy" not in names:
        return None
    import torch

    top_k = settings["token_accuracy"].top_k
    hits, total = 0, 0
    with torch.no_grad():
        for batch in data.batches():
            with data.autocast():
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")
                ).logits
            targets = batch["labels"][:, 1:]
            mask = targets != -100
            top = logits[:, :-1].topk(top_k, dim=-1).indices
            hit = (top == targets.unsqueeze(-1)).any(-1) & mask
            hits += int(hit.sum())
            total += int(mask.sum())
    # every rank makes the same calls, in the same order
    hits = data.collectives.all_reduce_sum(hits)
    total = data.collectives.all_reduce_sum(total)
    return {f"token_accuracy@{top_k}": hits / total} if total else {}
