"""Objective `causal_lm` (the default): the next-token loss over target tokens.

The loss is summed over target tokens; the core divides it by the target tokens of the whole
optimizer step across micro-batches and ranks. With `[train] chunked_loss = true` (the default)
it is computed chunk by chunk from the final hidden states (`tune.train.chunked_loss`), so the
[batch, seq, vocab] logits never exist; where that is not exact for the model (soft-capped
logits, a replaced forward, an unknown architecture) the model's own loss runs, and the run
says which one at its first step.
"""

from __future__ import annotations

from typing import Any

from tune.contract.objective import Batch, LossOutput, Objective
from tune.registry.hookspecs import hookimpl


class CausalLM(Objective):
    """The causal-LM objective: chunked where exact, else `model(**batch).loss` summed."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        recipe = getattr(ctx, "recipe", None)
        self.chunked = bool(getattr(getattr(recipe, "train", None), "chunked_loss", True))
        self._decided: dict[int, bool] = {}

    def _use_chunks(self, model: Any) -> bool:
        key = id(model)
        if key not in self._decided:
            from tune.train.chunked_loss import plain_reason

            reason = plain_reason(model) if self.chunked else "[train] chunked_loss = false"
            self._decided[key] = reason is None
            if self.ctx is not None and len(self._decided) == 1:
                what = "chunked (no full logits)" if reason is None else f"plain ({reason})"
                self.ctx.print(f"loss: {what}", markup=False)
        return self._decided[key]

    def loss(self, model: Any, batch: Batch) -> LossOutput:
        """The summed loss of one micro-batch, under the strategy's autocast."""
        if self._use_chunks(model):
            from tune.train.chunked_loss import forward_nll

            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss, _ = forward_nll(model, inputs, batch["labels"], reduce=True)
            return LossOutput(loss)
        # use_cache=False: no KV cache in training; with a cache transformers would not detect
        # packed rows (position ids restarting) and would let packed examples attend to each
        # other. num_items_in_batch=1: the model returns the summed token loss.
        out = model(**batch, use_cache=False, num_items_in_batch=1)
        return LossOutput(out.loss)


@hookimpl
def tune_provide(provide):
    provide.objective("causal_lm", doc="next-token cross-entropy over target tokens")


@hookimpl
def tune_build_objective(settings, ctx):
    return CausalLM(settings, ctx)
