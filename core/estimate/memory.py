"""The memory terms of one training process, each with the formula a user can check.

Counts live tensors (what `torch.cuda.max_memory_allocated` reports on a GPU); the allocator's
cache comes on top. Three phases can hold the peak: loading (the whole model on every rank
before a strategy shards it), forward/backward (weights, optimizer state, saved activations,
logits, gradients as they arrive) and the optimizer step (gradients + step temporaries).
The core counts what every run has (weights, gradients, activations, logits) and asks the
recipe's backends for the rest (`tune.estimate.contrib`): the quantization its packed weights,
each adapter its parameters, the strategy its sharding and buffers, the optimizer its state.
"""

from __future__ import annotations

from dataclasses import replace

import tune.estimate.contrib as contrib
from tune.contract.memory import MemoryTerm as Term
from tune.contract.memory import Plan, Sharding
from tune.estimate.contrib import BYTES
from tune.estimate.setup import Setup

MiB = 1 << 20


def terms(s: Setup) -> list[Term]:
    """All terms of the setup; `peak` takes the largest phase."""
    from tune.estimate.activations import activation_terms

    sh = s.shapes
    out: list[Term] = []
    total = sh.total_params()
    lin = sh.decoder_linear_params()
    wb = BYTES[s.weight_dtype]
    n = max(1, s.ranks)
    plan = trained_plan(s)
    full, trainable, tb = plan.full, plan.trainable, plan.trainable_bytes
    shard = contrib.sharding(s, plan)
    stage = shard.stage
    shard_params, offload_opt = stage >= 3, shard.optimizer_on_host
    div = n if shard_params else 1

    # -- parameters -----------------------------------------------------------------------------
    quantized = contrib.quantized_weights(s, plan)
    if quantized is not None:
        out += quantized
    else:
        pb = 4 if (full and s.master_fp32) else wb
        if shard.weight_bytes is not None:
            pb = shard.weight_bytes  # the engine's own weights; its master copy is its term
        why = " (fp32 master: trainable weights upcast)" if pb != wb else ""
        out.append(
            Term(
                "weights" + (" (trainable)" if full else " (frozen base)"),
                total * pb / div,
                f"{total:,} x {pb} B{why}" + (f" / {n} ranks" if shard_params else ""),
                host=shard.parameters_on_host,
            )
        )

    # -- trainable: adapters, gradients, optimizer ----------------------------------------------
    if shard.weight_bytes is not None:
        tb = shard.weight_bytes
    if s.adapters:
        desc = ", ".join(a.summary for a in s.adapters)
        out.append(
            Term("adapter weights", trainable * tb / div, f"{trainable:,} x {tb} B ({desc})")
        )
    grad_div = n if stage >= 2 else 1
    kept = shard.persistent_gradients
    out.append(
        Term(
            "gradients",
            trainable * tb / grad_div,
            f"{trainable:,} x {tb} B" + (f" / {n} ranks (ZeRO-{stage})" if grad_div > 1 else ""),
            phases=("compute", "step") if kept else ("step",),
            host=offload_opt and stage >= 2,
        )
    )
    if not kept and full:
        out.append(_head_gradient(s, tb))
    state = contrib.optimizer_state(s, replace(plan, trainable_bytes=tb))
    opt_div = n if stage >= 1 else 1
    out.append(
        Term(
            f"optimizer state ({s.optimizer.backend.name})",
            state.bytes / opt_div,
            state.formula + (f" / {n} ranks" if opt_div > 1 else ""),
            phases=("compute", "step"),
            host=offload_opt,
        )
    )
    own = [t for t in shard.terms if t.phases != ("load",)]
    loading = [t for t in shard.terms if t.phases == ("load",)]
    out += own
    if state.step is not None and not shard.own_step:
        out.append(replace(state.step, bytes=state.step.bytes / opt_div))

    # -- activations and logits -----------------------------------------------------------------
    out += activation_terms(s, full)
    out += _moe_terms(s, wb, div)
    out += _autocast_copies(s, shard, full, lin, div)
    # -- loading --------------------------------------------------------------------------------
    out += loading
    return out


def _moe_terms(s: Setup, wb: int, div: int) -> list[Term]:
    """A mixture-of-experts model's extra compute memory: the router logits every layer keeps
    for the load-balancing loss, and the merged expert stacks LoRA on fused experts holds for
    backward (one layer's under gradient checkpointing, which recomputes the others)."""
    sh = s.shapes
    if not sh.experts:
        return []
    out: list[Term] = []
    rows = s.micro_batch * s.local_seq * s.sequences
    if sh.config.get("output_router_logits"):
        out.append(
            Term(
                "router logits (load-balancing loss)",
                sh.layers * rows * sh.experts * 4,
                f"{sh.layers} layers x {rows:,} tokens x {sh.experts} experts x 4 B",
                phases=("compute",),
            )
        )
    copy = sum(a.layer_copy for a in s.adapters)
    if copy:
        held = 1 if s.checkpointing else sh.layers
        out.append(
            Term(
                "merged expert weights (LoRA on fused experts)",
                held * copy * wb / div,
                f"{held} layer(s) x {copy:,} x {wb} B"
                + (" (checkpointing: one layer at a time)" if s.checkpointing else ""),
                phases=("compute",),
            )
        )
    return out


def trained_plan(s: Setup) -> Plan:
    """The plan strategies and optimizers see: what trains, in which dtype."""
    full = not s.adapters and s.quantization is None
    # a full fine-tune trains the decoder; what the loader counts beside it (a vision tower and
    # projector) stays frozen
    decoder = s.shapes.total_params() - s.shapes.extra_params
    trainable = decoder if full else sum(a.params for a in s.adapters)
    # Trainable weights: fp32 with fp32 master weights (upcast) or over a k-bit base (a k-bit
    # dtype cannot train: what is added there is float32), else the loaded dtype.
    over_kbit = s.quantization is not None and not full
    tb = 4 if (s.master_fp32 or over_kbit) else BYTES[s.weight_dtype]
    return contrib.plan_of(s, full=full, trainable=trainable, trainable_bytes=tb)


def _autocast_copies(s: Setup, shard: Sharding, full: bool, lin: int, div: int) -> list[Term]:
    """Under 16-bit autocast each matmul of a full fine-tune saves a 16-bit copy of its fp32
    weight until backward, unless the strategy's engine casts the weights itself."""
    if s.precision not in ("bf16", "fp16") or not full or not shard.autocast_copies:
        return []
    return [
        Term(
            "16-bit copies of fp32 weights (autocast)",
            lin * 2 / div,
            f"{lin:,} x 2 B (saved by each matmul until backward)",
            phases=("compute",),
        )
    ]


def _head_gradient(s: Setup, tb: int) -> Term:
    """The output head's gradient is the first weight gradient of backward. With the plain loss
    it arrives after the log-softmax gradients (8 B per logit) are freed, so it only adds what
    exceeds them; with the chunked loss it accumulates while each chunk's logits live."""
    head = s.shapes.vocab * s.shapes.hidden
    if s.chunked:
        return Term("gradient of the output head", head * tb, f"{head:,} x {tb} B", ("compute",))
    rows = s.micro_batch * s.sequences * s.local_seq
    freed = rows * s.shapes.vocab * 8
    return Term(
        "gradient of the output head (beyond the freed logits gradients)",
        max(0, head * tb - freed),
        f"max(0, {head:,} x {tb} B - {rows:,} x {s.shapes.vocab:,} x 8 B)",
        phases=("compute",),
    )


def peak_of(s: Setup) -> tuple[float, str, list[Term], dict[str, float]]:
    """(peak bytes, its phase, the terms, every phase's total) of the setup."""
    all_terms = terms(s)
    phases = phase_totals(all_terms)
    phase = max(phases, key=lambda k: phases[k])
    return phases[phase], phase, all_terms, phases


def phase_totals(all_terms: list[Term]) -> dict[str, float]:
    """Device bytes held in each phase (offloaded terms count for the host, not the device)."""
    totals = {}
    for phase in ("load", "compute", "step"):
        totals[phase] = sum(t.bytes for t in all_terms if phase in t.phases and not t.host)
    return totals


def host_bytes(all_terms: list[Term]) -> float:
    return sum(t.bytes for t in all_terms if t.host)
