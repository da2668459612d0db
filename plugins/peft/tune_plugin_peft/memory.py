"""The PEFT adapters' part of `tune estimate`: exact trainable parameter counts from the shapes.

Each method's `estimate=` (`ESTIMATES[method]`) returns a `memory.AdapterSize`: the parameters
PEFT creates for the recipe step (checked against PEFT's own trainable count in tune's tests),
the linears it wraps, the r-wide middle each LoRA saves for backward, and its A and B matrices.
LoHa and LoKr are not counted yet: `tune estimate` says so instead of guessing.
Imports no torch or peft.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tune.plugin import TuneError, memory

# PEFT's default targets (target_modules = None) for the Llama family of decoders.
DEFAULT_TARGETS = ("q_proj", "v_proj")
IA3_TARGETS, IA3_FEEDFORWARD = ("k_proj", "v_proj", "down_proj"), ("down_proj",)
COUNTED = ("lora", "dora", "ia3")


def adapter_size(method: str, settings: Any, plan: memory.Plan) -> memory.AdapterSize:
    """Exact trainable parameter count of a PEFT LoRA / DoRA / IA3 step from the shapes."""
    shape = plan.shape
    if method not in COUNTED:
        raise TuneError(
            f"tune estimate counts lora, dora and ia3 adapters, not '{method}'.",
            where=plan.where,
            fix="estimate with method = 'lora' of a similar size, or measure a short run.",
        )
    targets = _targets(method, settings, shape, plan.where)
    layers = settings.layers_to_transform
    n_layers = len([x for x in layers if 0 <= x < shape.layers]) if layers else shape.layers
    r = int(getattr(settings, "r", 0) or 0)
    per_layer = 0
    for name in targets:
        fan_in, fan_out = shape.linears[name]
        if method == "ia3":
            ff = getattr(settings, "feedforward_modules", None) or IA3_FEEDFORWARD
            per_layer += fan_in if name in ff else fan_out  # scales the input of ff layers
            continue
        rank = int(getattr(settings, "rank_pattern", {}).get(name, r))
        per_layer += rank * (fan_in + fan_out) + (fan_out if method == "dora" else 0)
    experts, copy = _experts(method, settings, shape, r)
    per_layer += experts
    params = per_layer * n_layers
    # modules_to_save: PEFT trains a full copy of each (the head and embeddings are vocab x h).
    saved = list(settings.modules_to_save or [])
    params += sum(shape.vocab * shape.hidden for n in saved if n in ("lm_head", "embed_tokens"))
    on = "/".join(targets + (["experts"] if experts else []))
    return memory.AdapterSize(
        params=params,
        targets=tuple(targets),
        saved=r * len(targets),
        tensors=tuple((r * fan, n_layers) for name in targets for fan in shape.linears[name] if r),
        summary=f"{method} r={r} on {on} x {n_layers} layers" if r else f"{method} on {on}",
        layer_copy=copy,
    )


def _experts(method: str, settings: Any, shape: memory.ModelShape, r: int) -> tuple[int, int]:
    """(LoRA parameters on one layer's fused experts and router, elements of the merged expert
    weights that layer holds for backward), as targets.py resolves them. PEFT's LoRA on a
    [experts, in, out] weight has A: in x (r * experts) and B: (r * experts) x out."""
    if not shape.experts or method != "lora":
        return 0, 0
    want = settings.experts if settings.experts is not None else settings.targets == "all-linear"
    params = copy = 0
    if want:
        for fan_in, fan_out in shape.expert_weights.values():
            params += r * shape.experts * (fan_in + fan_out)
            copy += shape.experts * fan_in * fan_out
    if settings.router:  # the router as a 2-D weight: hidden -> experts
        params += r * (shape.hidden + shape.experts)
    return params, copy


def _targets(method: str, settings: Any, shape: memory.ModelShape, where: str) -> list[str]:
    """The decoder linears a step wraps, as PEFT resolves `target_modules`."""
    wanted = settings.targets
    if wanted is None:
        default = IA3_TARGETS if method == "ia3" else DEFAULT_TARGETS
        return [t for t in default if t in shape.linears]
    if wanted == "all-linear":
        return list(shape.linears)
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [t for t in names if t.split(".")[-1] not in shape.linears]
    if unknown:
        raise TuneError(
            f"targets {unknown} are not linear layers tune estimate knows for "
            f"'{shape.model_type}'.",
            where=where,
            fix=f"use names among {', '.join(shape.linears)} (or 'all-linear').",
        )
    return [n for n in shape.linears if any(n == t or n.endswith("." + t) for t in names)]


def _for(method: str) -> Callable[[Any, memory.Plan], memory.AdapterSize]:
    def estimate(settings: Any, plan: memory.Plan) -> memory.AdapterSize:
        return adapter_size(method, settings, plan)

    estimate.__name__ = f"{method}_estimate"
    return estimate


# `provide.adapter(method, ..., estimate=ESTIMATES[method])`
ESTIMATES = {method: _for(method) for method in ("lora", "dora", "ia3", "loha", "lokr")}
