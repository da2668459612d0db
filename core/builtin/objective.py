"""Objective `causal_lm` (the default): the next-token loss over target tokens.

The loss is the model's own (`model(**batch).loss`, summed); the core divides it by the target
tokens of the whole optimizer step across micro-batches and ranks.
"""

from __future__ import annotations

from tune.hookspecs import hookimpl
from tune.train.objective import Objective


@hookimpl
def tune_provide(provide):
    provide.objective("causal_lm", doc="next-token cross-entropy over target tokens")


@hookimpl
def tune_build_objective(settings, ctx):
    return Objective(settings, ctx)
