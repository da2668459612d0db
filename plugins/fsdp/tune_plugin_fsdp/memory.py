"""`fsdp`'s part of `tune estimate`: FSDP2 shards parameters, gradients and optimizer state.

It gathers one decoder layer at a time (plus the next, prefetched) and keeps the root module
(embeddings, head, final norm) gathered; with gradient accumulation and
`reshard_between_micro_batches = false` every layer stays gathered until the step's last
micro-batch. `cpu_offload` keeps the shards in host RAM. Its low-memory load reads the whole
model on rank 0 only (host RAM on a GPU machine) and sends the shards. Imports no torch.
"""

from __future__ import annotations

from typing import Any

from tune.plugin import memory


def estimate(settings: Any, plan: memory.Plan) -> memory.Sharding:
    """`provide.strategy("fsdp", ..., estimate=estimate)`."""
    offload = bool(settings.cpu_offload)
    return memory.Sharding(
        stage=3,
        optimizer_on_host=offload,
        parameters_on_host=offload,
        autocast_copies=False,  # mixed precision casts the gathered parameters itself
        terms=(gathered(settings, plan), loading(settings, plan)),
        variants=variants(settings, plan),
    )


def gathered(settings: Any, plan: memory.Plan) -> memory.MemoryTerm:
    sh = plan.shape
    total = sh.total_params()
    pb = 2 if plan.precision in ("bf16", "fp16") else 4
    layer = sh.layer_linear_params() + sh.layer_norm_params()
    root = sh.embedding_params() + sh.head_params() + sh.hidden
    if plan.grad_accum > 1 and not settings.reshard_between_micro_batches:
        count, how = total, f"{total:,} (all layers stay gathered between micro-batches)"
    else:
        count, how = root + 2 * layer, f"root {root:,} + 2 layers x {layer:,}"
    return memory.MemoryTerm(
        "gathered parameters (FSDP2)", count * pb, f"{how} x {pb} B", phases=("compute",)
    )


def loading(settings: Any, plan: memory.Plan) -> memory.MemoryTerm:
    """What loading holds beyond the shards: the whole model on every rank, or with the
    low-memory load on rank 0 only (in host RAM on a GPU machine)."""
    total, wb = plan.shape.total_params(), plan.weight_bytes
    whole = f"{total:,} x {wb} B"
    if settings.low_memory_load and not plan.quantized:
        return memory.MemoryTerm(
            "whole model on rank 0 while loading",
            total * wb,
            f"{whole} (rank 0 reads)",
            phases=("load",),
            host=plan.device == "gpu",
        )
    return memory.MemoryTerm(
        "whole model while loading (before sharding)",
        total * wb,
        f"{whole} on every rank",
        phases=("load",),
    )


def variants(settings: Any, plan: memory.Plan) -> tuple[dict[str, Any], ...]:
    """Settings that save memory, cheapest in speed first."""
    out: list[dict[str, Any]] = []
    if plan.grad_accum > 1 and not settings.reshard_between_micro_batches:
        out.append({"reshard_between_micro_batches": True})
    if not settings.cpu_offload:
        out.append({"cpu_offload": True})
    return tuple(out)
