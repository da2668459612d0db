"""Calling a backend: the declaring plugin's hook alone (`subset_hook_caller`), or the object
it declared (`build=`), and the metric hooks of every plugin serving a requested metric.

A mixin of the plugin manager (tune.registry.manager). Imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pluggy
from tune.registry.declare import Backend
from tune.registry.kinds import KINDS

# Where the contract class of each object kind lives (kinds.py names them, without imports).
BASES = {
    "Quantization": "tune.contract.quantization",
    "DataSource": "tune.contract.source",
    "Objective": "tune.contract.objective",
    "Tracker": "tune.contract.tracker",
    "Exporter": "tune.contract.exporter",
    "Reward": "tune.contract.reward",
    "Rollout": "tune.contract.rollout",
}


def build_object(selected: Any, ctx: Any) -> Any:
    """`selected.backend.build(settings, ctx)`, checked to be its kind's contract class (a
    factory returning something else is a plugin bug: traceback kept, naming the plugin)."""
    backend = selected.backend
    base_name = KINDS[backend.kind].base
    if backend.build is None or base_name is None:
        raise RuntimeError(f"{backend.label} is not an object kind: call its hook instead")
    made = backend.build(selected.settings, ctx)
    base = getattr(importlib.import_module(BASES[base_name]), base_name)
    if not isinstance(made, base):
        raise RuntimeError(
            f"plugin '{backend.plugin}' declared {backend.label} with build={backend.build!r}, "
            f"which returned {type(made).__name__}, not a tune.plugin.{base_name}"
        )
    return made


class Calls:
    """The manager's calling side; the manager supplies the registry it reads."""

    # -- calling -----------------------------------------------------------------------------
    def caller(self, hook_name: str, backend: Backend) -> pluggy.HookCaller:
        """A hook caller that reaches only the plugin that declared `backend`."""
        plugin = self.get_plugin(backend.plugin)
        others = [p for _, p in self.list_name_plugin() if p is not plugin and p is not None]
        return self.subset_hook_caller(hook_name, remove_plugins=others)

    def call(self, hook_name: str, selected: Any, **kwargs: Any) -> Any:
        """Call a backend hook on the plugin that declared the selected backend.

        `selected` is a `Selected` (backend + validated settings): `name` and `settings` are
        passed for it. A required hook that answers None is a plugin bug (traceback kept).
        """
        backend = selected.backend
        result = self.caller(hook_name, backend)(
            name=backend.name, settings=selected.settings, **kwargs
        )
        if result is None:
            raise RuntimeError(
                f"plugin '{backend.plugin}' declared {backend.label} but its {hook_name} "
                "returned nothing"
            )
        return result

    def call_optional(
        self, hook_name: str, selected: Any, default: Callable[[], Any], **kwargs: Any
    ) -> Any:
        """Like `call` for an optional hook: `default()` when the plugin does not implement it."""
        if hook_name not in self.implemented(selected.backend.plugin):
            return default()
        return self.call(hook_name, selected, **kwargs)

    def build(self, selected: Any, ctx: Any) -> Any:
        """The object an object-kind backend declared (`build=`), for the selected settings.

        A factory that returns something else than its kind's contract class is a plugin bug
        (traceback kept, naming the plugin).
        """
        return build_object(selected, ctx)

    def status_refusal(self, backend: Backend) -> str | None:
        """Why a backend cannot run here (its plugin's STATUS), or None when it can."""
        info = self.infos.get(backend.plugin)
        if info is None or info.status == "ok" or info.status.startswith("ok:"):
            return None
        return info.status

    def evaluate(
        self, metrics: dict[str, Any], model: Any, data: Any, ctx: Any
    ) -> dict[str, float]:
        """Every plugin serving a requested metric is asked; duplicate keys are an error.

        `metrics` maps each requested metric name to its `Selected` (backend + settings).
        """
        merged: dict[str, float] = {}
        owners: dict[str, str] = {}
        by_plugin: dict[str, list[str]] = {}
        for name, selected in metrics.items():
            by_plugin.setdefault(selected.backend.plugin, []).append(name)
        for plugin_name, names in sorted(by_plugin.items()):
            backend = metrics[names[0]].backend
            result = self.caller("tune_evaluate", backend)(
                names=names,
                settings={n: metrics[n].settings for n in names},
                model=model,
                data=data,
                ctx=ctx,
            )
            for part in result or []:
                for key, value in (part or {}).items():
                    if key in merged:
                        raise RuntimeError(
                            f"metric key '{key}' returned by both '{owners[key]}' and "
                            f"'{plugin_name}'"
                        )
                    merged[key], owners[key] = value, plugin_name
        return merged
