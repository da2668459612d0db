"""Objective `causal_lm` (the default): the next-token loss over target tokens.

The loss is summed over target tokens; the core divides it by the target tokens of the whole
optimizer step across micro-batches and ranks. With `[train] chunked_loss = true` (the default)
it is computed chunk by chunk from the final hidden states (`tune.train.chunked_loss`), so the
[batch, seq, vocab] logits never exist; where that is not exact for the model (soft-capped
logits, a replaced forward, an unknown architecture) the model's own loss runs, and the run
says which one at its first step. A mixture-of-experts model's router loss is added with the
model's coefficient, normalized like the token loss (`tune.train.router`), and logged apart.
"""

from __future__ import annotations

from typing import Any

from tune.plugin import Capabilities, LossOutput, Objective, hookimpl, next_token_terms


class CausalLM(Objective):
    """The causal-LM objective: chunked where exact, else `model(**batch).loss` summed."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        recipe = getattr(ctx, "recipe", None)
        self.chunked = bool(getattr(getattr(recipe, "train", None), "chunked_loss", True))
        self._said = False

    def loss(self, model: Any, batch: dict[str, Any]) -> LossOutput:
        """The summed loss of one micro-batch, under the strategy's autocast."""
        terms = next_token_terms(model, batch, self.chunked)
        if not self._said and self.ctx is not None:  # the run says once which loss it trains
            self._said = True
            what = "chunked (no full logits)" if terms.plain is None else f"plain ({terms.plain})"
            if terms.router is not None:
                what += " + the router's load-balancing loss (logged as router_loss)"
            self.ctx.print(f"loss: {what}", markup=False)
        return LossOutput(terms.total, terms.metrics)


@hookimpl
def tune_provide(provide):
    provide.objective(
        "causal_lm",
        doc="next-token cross-entropy over target tokens",
        build=CausalLM,
        capabilities=lambda settings: Capabilities(full_logits=False),
    )
