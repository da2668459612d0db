"""Checking a recipe's backends against what each declared it supports (`Capabilities`).

Runs at validation, after every backend is chosen and its settings validated, before the
plugins' own `tune_check_recipe`. Each refusal is one paragraph naming the two parties, why
(the declaring backend's `why`, where it gave one) and what to change, with the installed
alternatives that declare what is needed. No plugin compares another plugin's name: the
declarations are compared here. Imports no torch.
"""

from __future__ import annotations

from typing import Any

from tune.errors import TuneError
from tune.recipe import Recipe, Selected


def chosen(recipe: Recipe) -> list[tuple[str, Selected]]:
    """(where the recipe chose it, selection) for every backend of the recipe."""
    b = recipe.backends
    out: list[tuple[str, Selected]] = []
    for role, where in (
        ("strategy", "[strategy] name"),
        ("loader", "[model] loader"),
        ("quantization", "[model] quantize"),
        ("data_format", "[data] format"),
        ("data_source", "[data.source] name"),
        ("optimizer", "[optimizer] name"),
        ("objective", "[objective] name"),
    ):
        if b.get(role) is not None:
            out.append((where, b[role]))
    out += [(f"[[adapt]] #{i + 1} method", s) for i, s in enumerate(b.get("adapt", []))]
    out += [(f"[[data.mix]] #{i + 1} format", s) for i, s in enumerate(b.get("data_mix", []))]
    out += [(f"[eval] metrics '{n}'", s) for n, s in b.get("metrics", {}).items()]
    out += [(f"[[track]] #{i + 1} name", s) for i, s in enumerate(b.get("track", []))]
    return out


def _why(selected: Selected, field: str) -> str:
    reason = selected.capabilities.why.get(field)
    return f" ({reason})" if reason else ""


def _alternatives(pm: Any, kind: str, wanted, refused: str | None = None) -> str:
    """Installed backends of `kind` that can run here and whose default settings declare what
    `wanted` asks for (`refused`, the backend being refused, left out)."""
    names = []
    for backend in pm.declared(kind):
        if backend.name == refused or pm.status_refusal(backend):
            continue
        try:
            caps = backend.capabilities_for(backend.settings())
        except Exception:  # settings without defaults: cannot say
            continue
        if wanted(caps):
            names.append(backend.name)
    return ", ".join(sorted(set(names))) or "none installed"


def check_capabilities(recipe: Recipe, pm: Any) -> None:
    """Refuse, before anything loads, a recipe whose backends cannot work together here."""
    where = str(recipe.path)
    pairs = chosen(recipe)
    _check_available(pairs, pm, where)
    strategy = recipe.backends.get("strategy")
    if strategy is not None:
        _check_strategy(recipe, strategy, pairs, pm, where)
    _check_kernels(pairs, where)
    _check_objective(recipe, pm, where)


def _check_available(pairs: list[tuple[str, Selected]], pm: Any, where: str) -> None:
    from tune.machine.devices import visible_device_types

    visible = None
    for label, sel in pairs:
        backend = sel.backend
        refusal = pm.status_refusal(backend)
        if refusal:
            raise TuneError(
                f"{label} = '{backend.name}' cannot run here: {refusal}.",
                where=where,
                fix=f"choose another {backend.kind} "
                f"({_alternatives(pm, backend.kind, lambda c: True, backend.name)}"
                "), or see `tune plugins list` for what the plugin needs.",
            )
        devices = sel.capabilities.devices
        if devices:
            visible = visible if visible is not None else visible_device_types()
            if not visible & set(devices):
                raise TuneError(
                    f"{label} = '{backend.name}' needs a {' or '.join(devices)} device, and none "
                    f"is visible here{_why(sel, 'devices')}.",
                    where=where,
                    fix=f"remove it from the recipe, or run on a machine with a {devices[0]} device.",
                )


def _check_strategy(
    recipe: Recipe, strategy: Selected, pairs: list[tuple[str, Selected]], pm: Any, where: str
) -> None:
    caps = strategy.capabilities
    name = strategy.backend.name
    if caps.processes == "many":
        for label, sel in pairs:
            if sel is not strategy and sel.capabilities.processes == "one":
                raise TuneError(
                    f"{label} = '{sel.backend.name}' works in a single process{_why(sel, 'processes')}, "
                    f"but [strategy] name = '{name}' runs several.",
                    where=f"{where}: [strategy] name",
                    fix="use a single-process strategy "
                    f"({_alternatives(pm, 'strategy', lambda c: c.processes == 'one')}), or "
                    f"another {sel.backend.kind} for multi-process training.",
                )
    quantization = recipe.backends.get("quantization")
    if quantization is not None and not caps.quantized_models:
        raise TuneError(
            f"[strategy] name = '{name}' cannot train a quantized model (quantize = "
            f"'{quantization.backend.name}'){_why(strategy, 'quantized_models')}.",
            where=f"{where}: [strategy]",
            fix="drop quantize, or use a strategy that trains quantized models "
            f"({_alternatives(pm, 'strategy', lambda c: c.quantized_models, name)}).",
        )
    precision = recipe.train.precision
    if caps.precisions is not None and precision != "auto" and precision not in caps.precisions:
        raise TuneError(
            f"precision = '{precision}' is not supported by [strategy] name = '{name}'"
            f"{_why(strategy, 'precisions')}.",
            where=f"{where}: [train] precision",
            fix=f'use one of {", ".join(caps.precisions)} (or "auto").',
        )


def _check_kernels(pairs: list[tuple[str, Selected]], where: str) -> None:
    seen: dict[str, tuple[str, Selected]] = {}
    for label, sel in pairs:
        for kernel in sel.capabilities.replaces_kernels:
            if kernel in seen:
                other_label, other = seen[kernel]
                shared = sorted(
                    set(sel.capabilities.replaces_kernels)
                    & set(other.capabilities.replaces_kernels)
                )
                reason = sel.capabilities.why.get("replaces_kernels") or other.capabilities.why.get(
                    "replaces_kernels"
                )
                raise TuneError(
                    f"{other_label} = '{other.backend.name}' and {label} = '{sel.backend.name}' "
                    f"both replace the model's {', '.join(shared)} kernels with their own"
                    + (f" ({reason})." if reason else "."),
                    where=where,
                    fix="keep one of them.",
                )
            seen[kernel] = (label, sel)


def _check_objective(recipe: Recipe, pm: Any, where: str) -> None:
    objective = recipe.backends.get("objective")
    if objective is None:
        return
    caps, name = objective.capabilities, objective.backend.name
    formats = [recipe.backends.get("data_format"), *recipe.backends.get("data_mix", [])]
    for i, fmt in enumerate(f for f in formats if f is not None):
        if fmt.backend.examples == objective.backend.examples:
            continue
        table = "[data]" if i == 0 else f"[[data.mix]] #{i}"
        raise TuneError(
            f"{table} format = '{fmt.backend.name}' gives '{fmt.backend.examples}' examples, "
            f"but [objective] name = '{name}' trains on '{objective.backend.examples}' "
            "examples.",
            where=where,
            fix="use an objective made for this data (e.g. a preference objective for preference "
            "pairs) or a format that gives what the objective needs.",
        )
    data = recipe.data
    if data.pack and not caps.packs:
        raise TuneError(
            f"objective '{name}' does not train on packed micro-batches{_why(objective, 'packs')}.",
            where=f"{where}: [data] pack",
            fix="set pack = false.",
        )
    if data.streaming and not caps.streams:
        raise TuneError(
            f"objective '{name}' cannot train on streamed data{_why(objective, 'streams')}.",
            where=f"{where}: [data] streaming",
            fix="set streaming = false (or change the objective's settings that need all rows).",
        )
    strategy = recipe.backends.get("strategy")
    full_model = not recipe.backends.get("adapt")
    sharded = strategy is not None and strategy.capabilities.shards_parameters
    if caps.needs_reference and full_model and sharded:
        raise TuneError(
            f"objective '{name}' keeps a frozen copy of the model as its reference in a full "
            f"fine-tune, which [strategy] name = '{strategy.backend.name}' cannot hold: it "
            f"partitions every parameter across ranks{_why(objective, 'needs_reference')}.",
            where=f"{where}: [strategy]",
            fix='train an adapter ([[adapt]] method = "lora": the reference is then the '
            "base with the adapter off), or use a strategy that keeps whole parameters.",
        )
    examples = objective.backend.examples
    has_eval = bool(data.eval or data.eval_fraction)
    for metric, sel in recipe.backends.get("metrics", {}).items():
        scores = sel.capabilities.scores
        if has_eval and scores is not None and examples not in scores:
            able = [
                b.name
                for b in pm.declared("metric")
                if (s := b.capabilities_for(_defaults(b)).scores) is None or examples in s
            ]
            raise TuneError(
                f"metric '{metric}' scores {' or '.join(repr(s) for s in scores)} examples, and "
                f"[objective] name = '{name}' trains on '{examples}' examples"
                f"{_why(sel, 'scores')}.",
                where=f"{where}: [eval] metrics",
                fix=f"use metrics that score them ({', '.join(sorted(set(able))) or 'none installed'}).",
            )


def _defaults(backend: Any) -> Any:
    try:
        return backend.settings()
    except Exception:
        return None
