"""What to change when a recipe does not fit: single changes, each checked by counting again.

Tried cheapest in speed or quality first: the core's own switches (gradient checkpointing, the
chunked loss), every installed optimizer, 16-bit precision, the recipe's strategy with the
settings variants it offers, every other installed strategy (its defaults, then its variants),
then under adapters every installed quantization, and for a full fine-tune every installed
adapter. Only backends that declare an estimate are tried (one without would be counted no
smaller), and only where their capabilities allow the recipe. Each suggestion is labelled with
the `-o` overrides that make it, from the backend's name and settings: the core names none.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import tune.estimate.contrib as contrib
from pydantic import ValidationError
from tune.errors import TuneError
from tune.estimate.memory import peak_of, trained_plan
from tune.estimate.setup import Setup

GiB = 1 << 30
Candidate = tuple[str, Setup]


def advise(s: Setup, budget: float, plugins: Any = None) -> list[str]:
    """Single changes that make the setup fit `budget`, cheapest in speed or quality first.

    Each group of candidates is one change (a strategy and its settings count as one): the
    first of a group that fits is suggested.
    """
    groups: list[list[Candidate]] = []
    if not s.checkpointing:
        groups.append([("-o train.gradient_checkpointing=true", replace(s, checkpointing=True))])
    if not s.chunked and s.chunkable:
        groups.append([("-o train.chunked_loss=true", replace(s, chunked=True))])
    groups += _optimizers(s, plugins)
    if s.precision == "fp32" and s.device == "gpu" and _allows(s.strategy.capabilities, s, "bf16"):
        change = {"precision": "bf16", "weight_dtype": "bfloat16"}
        groups.append([("-o train.precision=bf16 -o model.dtype=bfloat16", replace(s, **change))])
    groups += _strategies(s, plugins)
    groups += _quantizations(s, plugins)
    groups += _adapters(s, plugins)
    out = []
    for group in groups:
        for label, candidate in group:
            try:
                peak = peak_of(replace(candidate, notes=[]))[0]
            except TuneError:
                continue  # a backend that cannot count this what-if
            if peak <= budget:
                out.append(f"{label}: peak {peak / GiB:.2f} GiB")
                break
    return out


# -- each kind ------------------------------------------------------------------------------------
def _optimizers(s: Setup, plugins: Any) -> list[list[Candidate]]:
    groups = []
    for backend, settings in _installed(plugins, "optimizer", s):
        if backend.name != s.optimizer.backend.name:
            label = f"-o optimizer.name={backend.name}{_dist(plugins, backend)}"
            groups.append([(label, replace(s, optimizer=_selected(backend, settings)))])
    return groups


def _strategies(s: Setup, plugins: Any) -> list[list[Candidate]]:
    """The recipe's strategy with the variants it offers; every other installed strategy with
    its defaults, then its variants, on every device asked for."""
    current = s.strategy
    groups = [
        [
            (_settings_label("strategy", change), candidate)
            for change, candidate in _variants(s, current.backend, current.settings)
        ]
    ]
    gpus = max(s.ranks, s.gpus)
    for backend, settings in _installed(plugins, "strategy", s):
        if backend.name == current.backend.name:
            continue
        caps = backend.capabilities_for(settings)
        if not _allows(caps, s, s.precision) or (s.quantization and not caps.quantized_models):
            continue
        ranks = 1 if caps.processes == "one" else gpus
        base = replace(s, strategy=_selected(backend, settings), ranks=ranks, notes=[])
        name = f"-o strategy.name={backend.name}"
        where = _dist(plugins, backend) + (f", {ranks} ranks" if ranks > 1 else "")
        group = [(name + where, base)]
        for change, candidate in _variants(base, backend, settings):
            group.append((f"{name} {_settings_label('strategy', change)}{where}", candidate))
        groups.append(group)
    return groups


def _variants(s: Setup, backend: Any, settings: Any) -> list[tuple[dict[str, Any], Setup]]:
    """The memory-saving settings the strategy offers for `s`, each as a what-if setup."""
    if backend.estimate is None:
        return []
    try:
        sharding = contrib.sharding(replace(s, notes=[]), trained_plan(replace(s, notes=[])))
    except TuneError:
        return []
    out = []
    for change in sharding.variants:
        try:
            changed = backend.settings.model_validate({**settings.model_dump(), **change})
        except ValidationError:
            continue
        caps = backend.capabilities_for(changed)
        if s.quantization is not None and not caps.quantized_models:
            continue
        out.append((change, replace(s, strategy=_selected(backend, changed), notes=[])))
    return out


def _quantizations(s: Setup, plugins: Any) -> list[list[Candidate]]:
    """Under adapters: each installed quantization, where the strategy trains quantized."""
    if s.quantization is not None or not s.adapters:
        return []
    if not s.strategy.capabilities.quantized_models:
        return []
    groups = []
    for backend, settings in _installed(plugins, "quantization", s):
        label = f"-o model.quantize={backend.name}{_dist(plugins, backend)}"
        groups.append([(label, replace(s, quantization=_selected(backend, settings)))])
    return groups


def _adapters(s: Setup, plugins: Any) -> list[list[Candidate]]:
    """For a full fine-tune: each installed adapter with its default settings."""
    if s.adapters or s.quantization is not None:
        return []
    groups = []
    for backend, settings in _installed(plugins, "adapter", s):
        step = _selected(backend, settings)
        try:
            sizes = contrib.adapter_sizes(replace(s, notes=[]), [step])
        except TuneError:
            continue  # it cannot count this model with its defaults
        if sizes:
            label = f'[[adapt]] method = "{backend.name}"{_dist(plugins, backend)}'
            groups.append([(label, replace(s, adapters=sizes))])
    return groups


# -- helpers --------------------------------------------------------------------------------------
def _installed(plugins: Any, kind: str, s: Setup) -> list[tuple[Any, Any]]:
    """(backend, default settings) of each usable backend of `kind` that declares an estimate;
    of two with one name, the one scoped to the recipe's loader."""
    if plugins is None:
        return []
    chosen: dict[str, Any] = {}
    for backend in plugins.declared(kind):
        if backend.estimate is None or backend.for_loader not in (None, s.loader):
            continue
        info = plugins.infos.get(backend.plugin)
        if backend.missing() or (info is not None and not info.status.startswith("ok")):
            continue
        if backend.name not in chosen or backend.for_loader is not None:
            chosen[backend.name] = backend
    out = []
    for backend in chosen.values():
        try:
            settings = backend.settings.model_validate({})
        except ValidationError:
            continue  # it needs keys only the user can give
        if _allows(backend.capabilities_for(settings), s, s.precision):
            out.append((backend, settings))
    return out


def _allows(caps: Any, s: Setup, precision: str) -> bool:
    """The backend's capabilities accept this precision and the target device."""
    if caps.precisions is not None and precision not in caps.precisions:
        return False
    device = "cuda" if s.device == "gpu" else "cpu"
    return caps.devices is None or device in caps.devices


def _selected(backend: Any, settings: Any) -> Any:
    from tune.recipe import Selected

    return Selected(backend, settings)


def _dist(plugins: Any, backend: Any) -> str:
    """' (tune-plugin-x)' for a backend from another distribution than tune's."""
    info = plugins.infos.get(backend.plugin) if plugins is not None else None
    dist = info.distribution if info is not None else ""
    return f" ({dist})" if dist and dist not in ("tune", "?", "(in-process)") else ""


def _settings_label(role: str, change: dict[str, Any]) -> str:
    return " ".join(f"-o {role}.{key}={_toml(value)}" for key, value in change.items())


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
