"""The memory terms of one training process, each with the formula a user can check.

Counts live tensors (what `torch.cuda.max_memory_allocated` reports on a GPU); the allocator's
cache comes on top. Three phases can hold the peak: loading (the whole model on every rank
before a strategy shards it), forward/backward (weights, optimizer state, saved activations,
logits, gradients as they arrive) and the optimizer step (gradients + step temporaries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tune.contract.memory import MemoryTerm as Term
from tune.estimate.shapes import Adapter, Shapes

MiB = 1 << 20
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp32": 4, "bf16": 2, "fp16": 2}
NF4_BLOCK, STATE_BLOCK, DQ_BLOCK = 64, 256, 256  # bitsandbytes block sizes


@dataclass
class Setup:
    """What the recipe decides, resolved for the target device (gpu: bf16 auto; cpu: fp32)."""

    shapes: Shapes
    adapters: list[Adapter]
    device: str  # "gpu" | "cpu"
    ranks: int
    weight_dtype: str
    precision: str
    master_fp32: bool
    quantize: str | None
    quant: Any
    optimizer: str
    opt: Any
    strategy: str
    strat: Any
    micro_batch: int
    seq: int
    checkpointing: bool
    chunked: bool
    lean: bool = False  # [train] lean_activations applies to this model's MLPs
    notes: list[str] = field(default_factory=list)
    grad_accum: int = 1
    gpus: int = 1  # devices asked for (--gpus), even where the strategy uses one
    file_dtype: str = "float32"  # dtype of the checkpoint on disk


def terms(s: Setup) -> list[Term]:
    """All terms of the setup; `peak` takes the largest phase."""
    from tune.estimate.activations import activation_terms
    from tune.estimate.sharding import gathered_terms, load_terms

    sh = s.shapes
    out: list[Term] = []
    total = sh.total_params()
    lin = sh.layers * sh.layer_linear_params()
    rest = total - lin
    wb = BYTES[s.weight_dtype]
    full = not s.adapters and not s.quantize
    n = max(1, s.ranks)
    stage, shard_params, offload_opt, offload_par = sharding(s)

    # -- parameters -----------------------------------------------------------------------------
    if s.quantize in ("nf4", "fp4"):
        dq = getattr(s.quant, "double_quant", True)
        per = 0.5 + (1 / NF4_BLOCK + 4 / (NF4_BLOCK * DQ_BLOCK) if dq else 4 / NF4_BLOCK)
        out.append(
            Term(
                f"weights, {s.quantize} (decoder linears)",
                lin * per,
                f"{lin:,} x {per:.4f} B (4-bit + absmax{' double-quantized' if dq else ''})",
            )
        )
        out.append(_unquantized(s, total, rest))
    elif s.quantize == "int8":
        scales = sh.layers * sum(o for _, o in sh.linears.values()) * 4
        out.append(Term("weights, int8 (decoder linears)", lin + scales, f"{lin:,} x 1 B + scales"))
        out.append(_unquantized(s, total, rest))
    else:
        pb = 4 if (full and s.master_fp32) else wb
        if s.strategy == "deepspeed" and s.precision in ("bf16", "fp16"):
            pb = 2  # the engine holds 16-bit weights; its fp32 master is a term of its own
        why = " (fp32 master: trainable weights upcast)" if pb != wb else ""
        shard = f" / {n} ranks" if shard_params else ""
        out.append(
            Term(
                "weights" + (" (trainable)" if full else " (frozen base)"),
                total * pb / (n if shard_params else 1),
                f"{total:,} x {pb} B{why}{shard}",
                host=offload_par,
            )
        )

    # -- trainable: adapters, gradients, optimizer ----------------------------------------------
    trainable = total if full else sum(a.params for a in s.adapters)
    # Trainable weights: fp32 with fp32 master weights (upcast) or over a k-bit base (PEFT
    # creates adapters in float32 there), else the loaded dtype.
    tb = 4 if (s.master_fp32 or (s.quantize and not full)) else wb
    if s.strategy == "deepspeed" and s.precision in ("bf16", "fp16"):
        tb = 2
    if s.adapters:
        desc = ", ".join(
            f"{a.method} r={a.rank} on {'/'.join(a.targets)} x {a.layers} layers"
            if a.rank
            else f"{a.method} on {'/'.join(a.targets)}"
            for a in s.adapters
        )
        out.append(
            Term(
                "adapter weights",
                trainable * tb / (n if shard_params else 1),
                f"{trainable:,} x {tb} B ({desc})",
            )
        )
    grad_div = n if stage >= 2 else 1
    kept = s.strategy in ("deepspeed", "ddp")  # engine/bucket buffers live across steps
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
    if s.strategy == "ddp":
        out.append(
            Term(
                "DDP gradient buckets",
                trainable * tb,
                f"{trainable:,} x {tb} B (all-reduce buffers)",
                phases=("compute", "step"),
            )
        )
    state, how = _optimizer_bytes(s, trainable, tb)
    opt_div = n if stage >= 1 else 1
    out.append(
        Term(
            f"optimizer state ({s.optimizer})",
            state / opt_div,
            how + (f" / {n} ranks" if opt_div > 1 else ""),
            phases=("compute", "step"),
            host=offload_opt,
        )
    )
    if s.strategy == "deepspeed" and stage >= 1:
        out.append(
            Term(
                "fp32 master partition (DeepSpeed)",
                trainable * 4 / n,
                f"{trainable:,} x 4 B / {n} ranks (ZeRO keeps its own fp32 copy)",
                phases=("compute", "step"),
                host=offload_opt,
            )
        )
    if s.strategy == "deepspeed" and stage >= 2 and not offload_opt:
        bucket = min(float(getattr(s.strat, "reduce_bucket_size", None) or 5e8), trainable)
        out.append(
            Term(
                "gradient bucket (DeepSpeed)",
                bucket * tb,
                f"min(reduce_bucket_size, {trainable:,}) x {tb} B",
                phases=("compute", "step"),
            )
        )
    out += gathered_terms(s, full)
    step_tmp = _step_temporaries(s, trainable, tb, opt_div)
    if step_tmp:
        out.append(Term(*step_tmp, phases=("step",)))

    # -- activations and logits -----------------------------------------------------------------
    out += activation_terms(s, full)
    if s.precision in ("bf16", "fp16") and full and s.strategy in ("single", "ddp"):
        out.append(
            Term(
                "16-bit copies of fp32 weights (autocast)",
                lin * 2 / (n if shard_params else 1),
                f"{lin:,} x 2 B (saved by each matmul until backward)",
                phases=("compute",),
            )
        )
    # -- loading --------------------------------------------------------------------------------
    out += load_terms(s, total, wb, shard_params)
    return out


def _head_gradient(s: Setup, tb: int) -> Term:
    """The output head's gradient is the first weight gradient of backward. With the plain loss
    it arrives after the log-softmax gradients (8 B per logit) are freed, so it only adds what
    exceeds them; with the chunked loss it accumulates while each chunk's logits live."""
    head = s.shapes.vocab * s.shapes.hidden
    if s.chunked:
        return Term("gradient of the output head", head * tb, f"{head:,} x {tb} B", ("compute",))
    freed = s.micro_batch * s.seq * s.shapes.vocab * 8
    return Term(
        "gradient of the output head (beyond the freed logits gradients)",
        max(0, head * tb - freed),
        f"max(0, {head:,} x {tb} B - {s.micro_batch * s.seq:,} x {s.shapes.vocab:,} x 8 B)",
        phases=("compute",),
    )


def _unquantized(s: Setup, total: int, rest: int) -> Term:
    """Embeddings, head and norms of a k-bit model: float32 after PEFT's k-bit preparation.

    On CPU they stay views into the memory-mapped checkpoint, which therefore stays mapped
    whole (every page was read while quantizing): the process holds the file, not a copy.
    """
    if s.device == "cpu":
        fb = BYTES.get(s.file_dtype, 4)
        return Term(
            "checkpoint file, memory-mapped (unquantized weights are views into it)",
            total * fb,
            f"{total:,} x {fb} B ({s.file_dtype} file; CPU only)",
        )
    return Term(
        "weights, unquantized (embeddings, head, norms)",
        rest * 4,
        f"{rest:,} x 4 B (float32: k-bit preparation upcasts 16-bit weights)",
    )


def sharding(s: Setup) -> tuple[int, bool, bool, bool]:
    """(zero-like stage, params sharded, optimizer offloaded, params offloaded)."""
    if s.strategy == "deepspeed":
        stage = int(getattr(s.strat, "zero_stage", 2))
        opt = getattr(s.strat, "offload_optimizer", "none") != "none"
        par = getattr(s.strat, "offload_params", "none") != "none"
        return stage, stage == 3, opt, par and stage == 3
    if s.strategy == "fsdp":
        off = bool(getattr(s.strat, "cpu_offload", False))
        return 3, True, off, off
    return 0, False, False, False


def _optimizer_bytes(s: Setup, trainable: int, tb: int) -> tuple[float, str]:
    name, opt = s.optimizer, s.opt
    if name in ("adamw_8bit", "paged_adamw_8bit", "lion_8bit"):
        states = 1 if name.startswith("lion") else 2
        small = _small_tensor_params(s, int(getattr(opt, "min_8bit_size", 4096)))
        big = trainable - small
        per = 1 + 4 / STATE_BLOCK
        total = states * (big * per + small * 4)
        paged = " in paged memory" if name.startswith("paged") else ""
        return total, (
            f"{states} x ({big:,} x {per:.3f} B 8-bit + {small:,} x 4 B small tensors){paged}"
        )
    if name == "anyprecision_adamw":
        m = BYTES[getattr(opt, "momentum_dtype", "bfloat16")]
        v = BYTES[getattr(opt, "variance_dtype", "bfloat16")]
        k = BYTES[getattr(opt, "compensation_buffer_dtype", "bfloat16")]
        kahan = bool(getattr(opt, "use_kahan_summation", False))
        per = m + v + (k if kahan else 0)
        return trainable * per, f"{trainable:,} x {per} B (momentum {m} + variance {v}" + (
            f" + Kahan {k})" if kahan else ")"
        )
    if name == "paged_adamw_32bit":
        return trainable * 8, f"{trainable:,} x 2 x 4 B in paged memory"
    if name not in ("adamw",):
        s.notes.append(f"optimizer '{name}' is counted like AdamW (2 states of the weight dtype).")
    return trainable * 2 * tb, f"{trainable:,} x 2 states x {tb} B"


def _small_tensor_params(s: Setup, min_size: int) -> int:
    """Trainable parameters in tensors below min_8bit_size (they keep 32-bit state)."""
    sh = s.shapes
    if s.adapters:
        small = 0
        for a in s.adapters:
            for name in a.targets:
                fi, fo = sh.linears[name]
                small += sum(x for x in (a.rank * fi, a.rank * fo) if x < min_size) * a.layers
        return small
    norms = sh.layers * sh.layer_norm_params() + sh.hidden
    return norms if sh.hidden < min_size else 0


def _step_temporaries(s: Setup, trainable: int, tb: int, div: int) -> tuple[str, float, str]:
    """AdamW's sqrt(v) temporary: for every tensor at once with foreach (a GPU with fused =
    false), for one tensor at a time on CPU (torch's default there), none when fused (tune's
    default on CUDA)."""
    if s.optimizer != "adamw" or s.strategy == "deepspeed":
        return None  # type: ignore[return-value]
    fused = getattr(s.opt, "fused", None)
    if s.device == "gpu" and fused is not False:
        return None  # type: ignore[return-value]
    if s.device == "gpu":
        return ("AdamW foreach temporaries", trainable * tb / div, f"{trainable:,} x {tb} B")
    sh = s.shapes
    if s.adapters:
        big = max((a.rank * max(sh.linears[t]) for a in s.adapters for t in a.targets), default=0)
    else:
        big = sh.vocab * sh.hidden
    return ("AdamW temporaries (largest tensor)", big * tb / div, f"{big:,} x {tb} B (sqrt(v))")


def phase_totals(all_terms: list[Term]) -> dict[str, float]:
    """Device bytes held in each phase (offloaded terms count for the host, not the device)."""
    totals = {}
    for phase in ("load", "compute", "step"):
        totals[phase] = sum(t.bytes for t in all_terms if phase in t.phases and not t.host)
    return totals


def host_bytes(all_terms: list[Term]) -> float:
    return sum(t.bytes for t in all_terms if t.host)
