"""Metric `preference`: the objective's loss and rewards over the eval pairs, no gradients."""

from __future__ import annotations

from typing import Any


def evaluate_pairs(model: Any, data: Any) -> dict[str, float]:
    """eval_loss and eval_<metric> as means over every eval pair (or KTO example) of every
    rank; a (sum, n) metric is its own mean, as in training."""
    import torch

    from .objectives import KTOObjective, PairObjective

    objective = data.objective
    if not isinstance(objective, PairObjective | KTOObjective):  # the core refuses it (scores)
        return {}
    loss = pairs = 0.0
    sums: dict[str, list[float]] = {}  # key -> [sum, n]; n None-like (-1) = per unit
    with torch.no_grad():
        for batch in data.batches():
            with data.autocast():
                out = objective.loss(model, batch)
            loss += float(out.loss)
            pairs += objective.count(batch)
            for key, value in out.metrics.items():
                total, n = value if isinstance(value, tuple) else (value, None)
                acc = sums.setdefault(key, [0.0, 0.0, n is None])
                acc[0] += float(total)
                acc[1] += float(n or 0)
    # the same reductions, in the same order, on every rank
    reduce = data.collectives.all_reduce_sum
    pairs = reduce(pairs)
    loss = reduce(loss)
    results = {}
    for key in sorted(sums):
        total, n, per_unit = sums[key]
        total = reduce(total)
        divisor = pairs if per_unit else reduce(n)
        results[f"eval_{key}"] = total / max(divisor, 1e-12)
    if not pairs:
        return {}
    return {"eval_loss": loss / pairs, **results}
