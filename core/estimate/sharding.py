"""Terms that only sharding strategies have: gathered parameters and the loading transient.

DeepSpeed ZeRO-3 gathers a module's partitions before it runs and, once it has traced a step,
keeps parameters it will reuse within `stage3_max_reuse_distance` (1e9 elements) gathered, up to
`stage3_max_live_parameters` (1e9): below ~1e9 parameters the whole model stays gathered during
forward and backward. FSDP2 gathers one decoder layer at a time (plus the next, prefetched) and
keeps the root module (embeddings, head, final norm) gathered; with gradient accumulation and
`reshard_between_micro_batches = false` every layer stays gathered until the step's last
micro-batch.
"""

from __future__ import annotations

from tune.estimate.memory import Setup, Term, sharding

ZERO3_LIVE = 10**9  # DeepSpeed's stage3_max_live_parameters / max_reuse_distance defaults


def gathered_terms(s: Setup, full: bool) -> list[Term]:
    stage, sharded, _, _ = sharding(s)
    if not sharded:
        return []
    sh = s.shapes
    total = sh.total_params()
    pb = 2 if s.precision in ("bf16", "fp16") else 4
    if s.strategy == "deepspeed":
        live = min(total, ZERO3_LIVE)
        return [
            Term(
                "gathered parameters (ZeRO-3)",
                live * pb,
                f"min({total:,}, stage3_max_live_parameters 1e9) x {pb} B",
                phases=("compute",),
            )
        ]
    layer = sh.layer_linear_params() + sh.layer_norm_params()
    root = sh.embedding_params() + sh.head_params() + sh.hidden
    accum = s.grad_accum > 1
    if accum and not getattr(s.strat, "reshard_between_micro_batches", False):
        count, how = total, f"{total:,} (all layers stay gathered between micro-batches)"
    else:
        count, how = root + 2 * layer, f"root {root:,} + 2 layers x {layer:,}"
    return [Term("gathered parameters (FSDP2)", count * pb, f"{how} x {pb} B", phases=("compute",))]


def load_terms(s: Setup, total: int, wb: int, sharded: bool) -> list[Term]:
    """What loading holds beyond the (sharded) weights.

    Without low-memory loading every rank reads the whole model before the strategy shards
    it. DeepSpeed's low-memory load builds every parameter already partitioned and each rank
    reads its partitions from the files; FSDP's reads the whole model on rank 0 only (host RAM
    on a GPU machine) and sends the shards.
    """
    if not sharded:
        return []
    low = bool(getattr(s.strat, "low_memory_load", False)) and not s.quantize
    whole = f"{total:,} x {wb} B"
    if not low:
        return [
            Term(
                "whole model while loading (before sharding)",
                total * wb,
                f"{whole} on every rank",
                phases=("load",),
            )
        ]
    if s.strategy == "fsdp":
        return [
            Term(
                "whole model on rank 0 while loading",
                total * wb,
                f"{whole} (rank 0 reads)",
                phases=("load",),
                host=s.device == "gpu",
            )
        ]
    return [
        Term(
            "read block while loading",
            64 << 20,
            "64 MiB (each rank reads its partitions from the files block by block)",
            phases=("load",),
        )
    ]
