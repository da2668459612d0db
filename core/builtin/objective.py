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

from tune.plugin import Capabilities, LossOutput, Objective, hookimpl, next_token_loss


class CausalLM(Objective):
    """The causal-LM objective: chunked where exact, else `model(**batch).loss` summed."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        recipe = getattr(ctx, "recipe", None)
        self.chunked = bool(getattr(getattr(recipe, "train", None), "chunked_loss", True))
        self._said = False

    def loss(self, model: Any, batch: dict[str, Any]) -> LossOutput:
        """The summed loss of one micro-batch, under the strategy's autocast."""
        loss, reason = next_token_loss(model, batch, self.chunked)
        if not self._said and self.ctx is not None:  # the run says once which loss it trains
            self._said = True
            what = "chunked (no full logits)" if reason is None else f"plain ({reason})"
            self.ctx.print(f"loss: {what}", markup=False)
        return LossOutput(loss)


@hookimpl
def tune_provide(provide):
    provide.objective(
        "causal_lm",
        doc="next-token cross-entropy over target tokens",
        build=CausalLM,
        capabilities=lambda settings: Capabilities(full_logits=False),
    )
