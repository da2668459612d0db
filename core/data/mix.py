"""Weighted mixing of training sources: `weight` (sampling probability) or `epochs` (repeats).

The mixed training set is a pure function of the sources' examples and the seed, so every rank
builds the same one and `--resume` replays it exactly (the batcher then shuffles it per epoch as
for a single source). With weights, the mix has as many examples as all sources together; each
is drawn from a source chosen with its probability (LLaMA-Factory's `interleave_probs`), taking
that source's examples in a seeded order and starting a new order when one runs out.
"""

from __future__ import annotations

import random
from typing import Any


def mix(
    parts: list[list[Any]],
    weights: list[float | None],
    epochs: list[float | None],
    seed: int,
) -> tuple[list[Any], list[int]]:
    """(the mixed examples, how many came from each source)."""
    if any(w is not None for w in weights):
        return _weighted(parts, [float(w or 0.0) for w in weights], seed)
    out: list[Any] = []
    counts = []
    for k, (part, times) in enumerate(zip(parts, epochs, strict=True)):
        chosen = _repeat(part, 1.0 if times is None else times, random.Random(seed * 31 + k))
        out += chosen
        counts.append(len(chosen))
    return out, counts


def _repeat(part: list[Any], times: float, rng: random.Random) -> list[Any]:
    """`times` copies of a source: whole copies, then a seeded subset for the fraction."""
    whole, frac = int(times), times - int(times)
    chosen = list(part) * whole
    extra = round(len(part) * frac)
    if extra:
        chosen += [part[i] for i in sorted(rng.sample(range(len(part)), extra))]
    return chosen


def _weighted(parts: list[list[Any]], weights: list[float], seed: int) -> tuple[list, list[int]]:
    rng = random.Random(seed)
    live = [k for k, part in enumerate(parts) if part and weights[k] > 0]
    total = sum(len(part) for part in parts)
    orders: dict[int, list[int]] = {}
    counts = [0] * len(parts)
    out = []
    picks = rng.choices(live, weights=[weights[k] for k in live], k=total) if live else []
    for k in picks:
        if not orders.get(k):
            order = list(range(len(parts[k])))
            rng.shuffle(order)
            orders[k] = order
        out.append(parts[k][orders[k].pop()])
        counts[k] += 1
    return out, counts
