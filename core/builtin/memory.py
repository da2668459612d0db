"""The built-in backends' parts of `tune estimate`, declared like any plugin's (`estimate=`).

`adamw`: two states per trainable value, and the temporaries of its step where torch makes
them; `single`: one process holds everything, and its gradients exist only through the step.
"""

from __future__ import annotations

from typing import Any

from tune.plugin import memory


def adamw(settings: Any, plan: memory.Plan) -> memory.OptimizerState:
    """exp_avg and exp_avg_sq in the trainable values' dtype.

    Its step's sqrt(v) temporary: for every tensor at once with foreach (a GPU with fused =
    false), for one tensor at a time on CPU (torch's default there), none when fused (tune's
    default on CUDA)."""
    n, tb = plan.trainable, plan.trainable_bytes
    state = memory.OptimizerState(n * 2 * tb, f"{n:,} x 2 states x {tb} B")
    fused = getattr(settings, "fused", None)
    if plan.device == "gpu" and fused is not False:
        return state
    if plan.device == "gpu":
        step = memory.MemoryTerm("AdamW foreach temporaries", n * tb, f"{n:,} x {tb} B", ("step",))
    else:
        sh = plan.shape
        if plan.adapters:
            big = max((size for a in plan.adapters for size, _ in a.tensors), default=0)
        else:
            big = sh.vocab * sh.hidden
        step = memory.MemoryTerm(
            "AdamW temporaries (largest tensor)", big * tb, f"{big:,} x {tb} B (sqrt(v))", ("step",)
        )
    return memory.OptimizerState(state.bytes, state.formula, step=step)


def single(settings: Any, plan: memory.Plan) -> memory.Sharding:
    """Nothing sharded; gradients are allocated in backward and freed after the step."""
    return memory.Sharding()
