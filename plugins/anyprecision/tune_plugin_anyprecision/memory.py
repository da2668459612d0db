"""`anyprecision_adamw`'s part of `tune estimate`: its state in the dtypes its settings choose.

Momentum and variance per trainable value, plus the Kahan compensation buffer when on: in
bf16 (the defaults) 6 bytes per value instead of AdamW's 8 in fp32. Imports no torch.
"""

from __future__ import annotations

from typing import Any

from tune.plugin import memory

BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def estimate(settings: Any, plan: memory.Plan) -> memory.OptimizerState:
    """`provide.optimizer("anyprecision_adamw", ..., estimate=estimate)`."""
    n = plan.trainable
    m = BYTES[settings.momentum_dtype]
    v = BYTES[settings.variance_dtype]
    k = BYTES[settings.compensation_buffer_dtype]
    kahan = bool(settings.use_kahan_summation)
    per = m + v + (k if kahan else 0)
    return memory.OptimizerState(
        n * per,
        f"{n:,} x {per} B (momentum {m} + variance {v}" + (f" + Kahan {k})" if kahan else ")"),
    )
