"""`ddp`'s part of `tune estimate`: everything replicated, plus the all-reduce buckets.

DDP keeps every rank's gradients and its bucket buffers (gradient-sized, all-reduced as
backward fills them) allocated across steps. Imports no torch.
"""

from __future__ import annotations

from typing import Any

from tune.plugin import memory


def estimate(settings: Any, plan: memory.Plan) -> memory.Sharding:
    """`provide.strategy("ddp", ..., estimate=estimate)`."""
    n, tb = plan.trainable, plan.trainable_bytes
    buckets = memory.MemoryTerm(
        "DDP gradient buckets",
        n * tb,
        f"{n:,} x {tb} B (all-reduce buffers)",
        phases=("compute", "step"),
    )
    return memory.Sharding(persistent_gradients=True, terms=(buckets,))
