"""Unsloth's backends' part of `tune estimate` (`estimate=ESTIMATES[name]`).

Unsloth loads through bitsandbytes (4-bit NF4 with double quantization, or LLM.int8()) and
prepares the model as PEFT's k-bit preparation does; its LoRA is PEFT's. The counts are those
of the bitsandbytes and peft plugins, for Unsloth's settings. Imports no torch or unsloth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tune.plugin import TuneError, memory

NF4_BLOCK, DQ_BLOCK = 64, 256  # bitsandbytes block sizes
FILE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_TARGETS = ("q_proj", "v_proj")  # PEFT's default targets for the Llama family


def nf4(settings: Any, plan: memory.Plan) -> list[memory.MemoryTerm]:
    """Packed 4-bit decoder linears (double-quantized absmax) and the unquantized rest."""
    lin = plan.shape.decoder_linear_params()
    per = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * DQ_BLOCK)
    packed = memory.MemoryTerm(
        "weights, nf4 (decoder linears)",
        lin * per,
        f"{lin:,} x {per:.4f} B (4-bit + absmax double-quantized)",
    )
    return [packed, _unquantized(plan)]


def int8(settings: Any, plan: memory.Plan) -> list[memory.MemoryTerm]:
    """A byte per weight and an fp32 scale per output feature, and the unquantized rest."""
    sh = plan.shape
    lin = sh.decoder_linear_params()
    scales = sh.layers * sum(o for _, o in sh.linears.values()) * 4
    packed = memory.MemoryTerm(
        "weights, int8 (decoder linears)", lin + scales, f"{lin:,} x 1 B + scales"
    )
    return [packed, _unquantized(plan)]


def _unquantized(plan: memory.Plan) -> memory.MemoryTerm:
    """Embeddings, head and norms: float32 after k-bit preparation; on CPU views into the
    memory-mapped checkpoint, which stays mapped whole."""
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


def lora(settings: Any, plan: memory.Plan) -> memory.AdapterSize:
    """FastLanguageModel.get_peft_model: PEFT's LoRA on the targets."""
    sh = plan.shape
    wanted = settings.targets
    if wanted is None:
        targets = [t for t in DEFAULT_TARGETS if t in sh.linears]
    elif wanted == "all-linear":
        targets = list(sh.linears)
    else:
        unknown = [t for t in wanted if t.split(".")[-1] not in sh.linears]
        if unknown:
            raise TuneError(
                f"targets {unknown} are not linear layers tune estimate knows for "
                f"'{sh.model_type}'.",
                where=plan.where,
                fix=f"use names among {', '.join(sh.linears)} (or 'all-linear').",
            )
        targets = [n for n in sh.linears if any(n == t or n.endswith("." + t) for t in wanted)]
    layers = settings.layers_to_transform
    n_layers = len([x for x in layers if 0 <= x < sh.layers]) if layers else sh.layers
    r = int(settings.r)
    params = sum(r * (i + o) for i, o in (sh.linears[t] for t in targets)) * n_layers
    saved = settings.modules_to_save or []
    params += sum(sh.vocab * sh.hidden for n in saved if n in ("lm_head", "embed_tokens"))
    return memory.AdapterSize(
        params=params,
        targets=tuple(targets),
        saved=r * len(targets),
        tensors=tuple((r * fan, n_layers) for t in targets for fan in sh.linears[t]),
        summary=f"lora r={r} on {'/'.join(targets)} x {n_layers} layers",
    )


# `provide.quantization(name, ..., estimate=ESTIMATES[name])`; `provide.adapter("lora", ...,
# estimate=ESTIMATES["lora"])`.
ESTIMATES: dict[str, Callable[[Any, memory.Plan], Any]] = {"nf4": nf4, "int8": int8, "lora": lora}
