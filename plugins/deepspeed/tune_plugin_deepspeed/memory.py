"""`deepspeed`'s part of `tune estimate`: ZeRO's sharding, its own buffers and the variants of
its settings that save memory.

ZeRO stage 1 partitions the optimizer state over the ranks, 2 the gradients too, 3 the
parameters too. Under bf16/fp16 the engine holds 16-bit weights and gradients, and from stage
1 its own fp32 master partition. Stage 2 reduces gradients through a bucket of
`reduce_bucket_size` elements. ZeRO-3 gathers a module's partitions before it runs and, once
it has traced a step, keeps parameters it will reuse within `stage3_max_reuse_distance` (1e9
elements) gathered, up to `stage3_max_live_parameters` (1e9): below ~1e9 parameters the whole
model stays gathered during forward and backward. Its low-memory load builds every parameter
already partitioned and each rank reads its partitions from the files. Imports no deepspeed.
"""

from __future__ import annotations

from typing import Any

from tune.plugin import memory

ZERO3_LIVE = 10**9  # DeepSpeed's stage3_max_live_parameters / max_reuse_distance defaults
BUCKET = 5e8  # DeepSpeed's default reduce_bucket_size


def estimate(settings: Any, plan: memory.Plan) -> memory.Sharding:
    """`provide.strategy("deepspeed", ..., estimate=estimate)`."""
    stage = int(settings.zero_stage)
    offload_opt = settings.offload_optimizer != "none"
    sixteen = plan.precision in ("bf16", "fp16")
    weight_bytes = 2 if sixteen else None
    tb = weight_bytes or plan.trainable_bytes
    n, trainable = plan.ranks, plan.trainable
    terms = []
    if stage >= 1:
        terms.append(
            memory.MemoryTerm(
                "fp32 master partition (DeepSpeed)",
                trainable * 4 / n,
                f"{trainable:,} x 4 B / {n} ranks (ZeRO keeps its own fp32 copy)",
                phases=("compute", "step"),
                host=offload_opt,
            )
        )
    if stage >= 2 and not offload_opt:
        bucket = min(float(settings.reduce_bucket_size or BUCKET), trainable)
        terms.append(
            memory.MemoryTerm(
                "gradient bucket (DeepSpeed)",
                bucket * tb,
                f"min(reduce_bucket_size, {trainable:,}) x {tb} B",
                phases=("compute", "step"),
            )
        )
    if stage == 3:
        terms += zero3_terms(settings, plan)
    return memory.Sharding(
        stage=stage,
        optimizer_on_host=offload_opt,
        parameters_on_host=settings.offload_params != "none" and stage == 3,
        weight_bytes=weight_bytes,
        persistent_gradients=True,  # the engine's gradient buffers live across steps
        autocast_copies=False,  # the engine casts the weights itself
        own_step=True,
        terms=tuple(terms),
        variants=variants(settings),
    )


def zero3_terms(settings: Any, plan: memory.Plan) -> list[memory.MemoryTerm]:
    """The gathered parameters, and what loading holds beyond the partitions."""
    total = plan.shape.total_params()
    pb = 2 if plan.precision in ("bf16", "fp16") else 4
    live = min(total, ZERO3_LIVE)
    gathered = memory.MemoryTerm(
        "gathered parameters (ZeRO-3)",
        live * pb,
        f"min({total:,}, stage3_max_live_parameters 1e9) x {pb} B",
        phases=("compute",),
    )
    wb = plan.weight_bytes
    if settings.low_memory_load and not plan.quantized:
        load = memory.MemoryTerm(
            "read block while loading",
            64 << 20,
            "64 MiB (each rank reads its partitions from the files block by block)",
            phases=("load",),
        )
    else:
        load = memory.MemoryTerm(
            "whole model while loading (before sharding)",
            total * wb,
            f"{total:,} x {wb} B on every rank",
            phases=("load",),
        )
    return [gathered, load]


def variants(settings: Any) -> tuple[dict[str, Any], ...]:
    """Settings that save memory, cheapest in speed first: partition the parameters, then
    offload the optimizer state (and the gradients) to CPU, then the parameters too."""
    out: list[dict[str, Any]] = []
    stage = int(settings.zero_stage)
    if stage < 3:
        out.append({"zero_stage": 3})
    if settings.offload_optimizer == "none":
        out.append({"offload_optimizer": "cpu", **({"zero_stage": 1} if stage == 0 else {})})
    if settings.offload_params == "none":
        out.append({"zero_stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"})
    return tuple(out)
