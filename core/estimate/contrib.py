"""Asking the recipe's backends for their part of `tune estimate`.

Each chosen backend's `estimate=` function (from its declaration) is called as
`estimate(settings, plan)` and answers for its kind (`tune.contract.memory` documents what).
A backend that declares none gets the conservative default documented there, and a note says
so: the core knows no backend by name, so it cannot know better.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tune.contract.memory import AdapterSize, MemoryTerm, OptimizerState, Plan, Sharding
from tune.estimate.setup import Setup

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp32": 4, "bf16": 2, "fp16": 2}
# A strategy that says nothing: everything replicated, gradient buffers kept all along.
UNKNOWN_STRATEGY = Sharding(persistent_gradients=True)


def plan_of(
    s: Setup,
    *,
    full: bool = False,
    trainable: int = 0,
    trainable_bytes: int | None = None,
    where: str = "",
) -> Plan:
    """The public view of the setup that `estimate=` functions receive."""
    wb = BYTES[s.weight_dtype]
    return Plan(
        shape=s.shapes,
        device=s.device,
        ranks=max(1, s.ranks),
        precision=s.precision,
        weight_bytes=wb,
        file_dtype=s.file_dtype,
        quantized=s.quantization is not None,
        full=full,
        trainable=trainable,
        trainable_bytes=trainable_bytes or wb,
        adapters=tuple(s.adapters),
        micro_batch=s.micro_batch,
        seq=s.seq,
        sequences=s.sequences,
        grad_accum=s.grad_accum,
        checkpointing=s.checkpointing,
        where=where,
        notes=s.notes,
    )


def note(s: Setup, text: str) -> None:
    if text not in s.notes:
        s.notes.append(text)


def ask(selected: Any, plan: Plan, expected: type | tuple[type, ...]) -> Any:
    """`selected`'s answer for `plan`, checked to be of the type its kind returns."""
    backend = selected.backend
    answer = backend.estimate(selected.settings, plan)
    if not isinstance(answer, expected):
        names = expected if isinstance(expected, tuple) else (expected,)
        raise TypeError(
            f"the estimate= function of {backend.label} (plugin '{backend.plugin}') returned "
            f"{type(answer).__name__}, not {' or '.join(t.__name__ for t in names)}"
        )
    return answer


def adapter_sizes(s: Setup, steps: list[Any]) -> list[AdapterSize]:
    """What each [[adapt]] step trains; a step without an estimate adds nothing."""
    out = []
    for i, sel in enumerate(steps):
        name = sel.backend.name
        if sel.backend.estimate is None:
            note(
                s,
                f"[[adapt]] {name} declares no memory estimate: its own weights are not counted "
                "(taken as small).",
            )
            continue
        size = ask(sel, plan_of(s, where=f"{s.path}: [[adapt]] {i}"), (AdapterSize, type(None)))
        if size is not None:
            out.append(size if size.summary else replace(size, summary=name))
    return out


def quantized_weights(s: Setup, plan: Plan) -> list[MemoryTerm] | None:
    """The quantization's weight terms, or None: not quantized, or counted unquantized."""
    sel = s.quantization
    if sel is None:
        return None
    if sel.backend.estimate is None:
        note(
            s,
            f"[model] quantize = {sel.backend.name} declares no memory estimate: the weights "
            "are counted unquantized.",
        )
        return None
    terms = ask(sel, replace(plan, where=f"{s.path}: [model.quantization]"), (list, tuple))
    if not all(isinstance(t, MemoryTerm) for t in terms):
        raise TypeError(
            f"the estimate= function of {sel.backend.label} (plugin '{sel.backend.plugin}') "
            "must return a list of MemoryTerm"
        )
    return list(terms)


def sharding(s: Setup, plan: Plan) -> Sharding:
    """What the strategy shards, offloads and adds on each rank."""
    sel = s.strategy
    if sel.backend.estimate is None:
        note(
            s,
            f"strategy {sel.backend.name} declares no memory estimate: counted unsharded, its "
            "gradient buffers held through forward and backward.",
        )
        return UNKNOWN_STRATEGY
    return ask(sel, replace(plan, where=f"{s.path}: [strategy]"), Sharding)


def optimizer_state(s: Setup, plan: Plan) -> OptimizerState:
    """The optimizer's state for the trainable values (and its step temporaries)."""
    sel = s.optimizer
    if sel.backend.estimate is None:
        note(
            s,
            f"optimizer '{sel.backend.name}' declares no memory estimate: counted like AdamW "
            "(2 states of the weight dtype).",
        )
        n, tb = plan.trainable, plan.trainable_bytes
        return OptimizerState(n * 2 * tb, f"{n:,} x 2 states x {tb} B")
    return ask(sel, replace(plan, where=f"{s.path}: [optimizer]"), OptimizerState)
