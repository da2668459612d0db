"""The bitsandbytes backends' part of `tune estimate` (`estimate=ESTIMATES[name]`).

Quantizations: the decoder linears at their packed bytes per weight (4-bit: half a byte plus
one absmax per 64-weight block, itself 8-bit per 256 blocks with double quantization; int8: a
byte plus an fp32 scale per output row), and the rest of the model as `prepare` leaves it.
Optimizers: 8-bit state is one byte per value plus an fp32 absmax per 256-value block; tensors
below `min_8bit_size` keep 32-bit state. Imports no torch or bitsandbytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tune.plugin import memory

NF4_BLOCK, STATE_BLOCK, DQ_BLOCK = 64, 256, 256  # bitsandbytes block sizes
FILE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def four_bit(name: str) -> Callable[[Any, memory.Plan], list[memory.MemoryTerm]]:
    """nf4 / fp4: the packed decoder linears and the unquantized rest."""

    def estimate(settings: Any, plan: memory.Plan) -> list[memory.MemoryTerm]:
        lin = plan.shape.decoder_linear_params()
        dq = bool(getattr(settings, "double_quant", True))
        per = 0.5 + (1 / NF4_BLOCK + 4 / (NF4_BLOCK * DQ_BLOCK) if dq else 4 / NF4_BLOCK)
        packed = memory.MemoryTerm(
            f"weights, {name} (decoder linears)",
            lin * per,
            f"{lin:,} x {per:.4f} B (4-bit + absmax{' double-quantized' if dq else ''})",
        )
        return [packed, unquantized(plan)]

    return estimate


def int8(settings: Any, plan: memory.Plan) -> list[memory.MemoryTerm]:
    """LLM.int8(): a byte per weight and an fp32 scale per output feature."""
    sh = plan.shape
    lin = sh.decoder_linear_params()
    scales = sh.layers * sum(o for _, o in sh.linears.values()) * 4
    packed = memory.MemoryTerm(
        "weights, int8 (decoder linears)", lin + scales, f"{lin:,} x 1 B + scales"
    )
    return [packed, unquantized(plan)]


def unquantized(plan: memory.Plan) -> memory.MemoryTerm:
    """Embeddings, head and norms of a k-bit model: float32 after PEFT's k-bit preparation.

    On CPU they stay views into the memory-mapped checkpoint, which therefore stays mapped
    whole (every page was read while quantizing): the process holds the file, not a copy.
    """
    total = plan.shape.total_params()
    if plan.device == "cpu":
        fb = FILE_BYTES.get(plan.file_dtype, 4)
        return memory.MemoryTerm(
            "checkpoint file, memory-mapped (unquantized weights are views into it)",
            total * fb,
            f"{total:,} x {fb} B ({plan.file_dtype} file; CPU only)",
        )
    rest = total - plan.shape.decoder_linear_params()
    return memory.MemoryTerm(
        "weights, unquantized (embeddings, head, norms)",
        rest * 4,
        f"{rest:,} x 4 B (float32: k-bit preparation upcasts 16-bit weights)",
    )


def eight_bit_state(states: int, paged: bool) -> Callable[[Any, memory.Plan], Any]:
    """AdamW (2 states) or Lion (1) with 8-bit state, optionally in paged memory."""

    def estimate(settings: Any, plan: memory.Plan) -> memory.OptimizerState:
        small = small_tensor_params(plan, int(getattr(settings, "min_8bit_size", 4096)))
        big = plan.trainable - small
        per = 1 + 4 / STATE_BLOCK
        where = " in paged memory" if paged else ""
        return memory.OptimizerState(
            states * (big * per + small * 4),
            f"{states} x ({big:,} x {per:.3f} B 8-bit + {small:,} x 4 B small tensors){where}",
        )

    return estimate


def paged_adamw_32bit(settings: Any, plan: memory.Plan) -> memory.OptimizerState:
    n = plan.trainable
    return memory.OptimizerState(n * 8, f"{n:,} x 2 x 4 B in paged memory")


def small_tensor_params(plan: memory.Plan, min_size: int) -> int:
    """Trainable parameters in tensors below min_8bit_size (they keep 32-bit state)."""
    if plan.adapters:
        return sum(
            size * count for a in plan.adapters for size, count in a.tensors if size < min_size
        )
    sh = plan.shape
    norms = sh.layers * sh.layer_norm_params() + sh.hidden
    return norms if sh.hidden < min_size else 0


# `provide.quantization(name, ..., estimate=ESTIMATES[name])`, and the same for optimizers.
ESTIMATES: dict[str, Callable[[Any, memory.Plan], Any]] = {
    "nf4": four_bit("nf4"),
    "fp4": four_bit("fp4"),
    "int8": int8,
    "adamw_8bit": eight_bit_state(2, paged=False),
    "paged_adamw_8bit": eight_bit_state(2, paged=True),
    "paged_adamw_32bit": paged_adamw_32bit,
    "lion_8bit": eight_bit_state(1, paged=False),
}
