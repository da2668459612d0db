"""Plugin manager: built-ins and entry points (group "tune") through one mechanism.

Built-in backends are modules registered exactly like third-party plugins; the only difference
is where the module name comes from. Each plugin declares its backends in `tune_provide`; the
core then calls the one declaring plugin for each backend through `subset_hook_caller`, so who
answered is never a matter of registration order. Imports no torch.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel, ConfigDict
from tune import __version__, hookspecs
from tune.errors import TuneError, did_you_mean

ENTRY_POINT_GROUP = "tune"
AUTOLOAD_ENV = "TUNE_DISABLE_PLUGIN_AUTOLOAD"

# (plugin name, module). Registered like any entry point, distribution "tune".
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("transformers", "tune.builtin.loader"),
    ("formats", "tune.builtin.formats"),
    ("adamw", "tune.builtin.optim"),
    ("single", "tune.builtin.single"),
    ("perplexity", "tune.builtin.metrics"),
)

# Where each kind is chosen in a recipe: used in every message about a backend.
KINDS: dict[str, str] = {
    "loader": "[model] loader",
    "quantization": "[model] quantize",
    "adapter": "[[adapt]] method",
    "data_format": "[data] format",
    "optimizer": "[optimizer] name",
    "strategy": "[strategy] name",
    "metric": "[eval] metrics",
}

# Which distribution to install for a backend nobody serves yet.
KNOWN_PROVIDERS: dict[tuple[str, str], str] = {
    **{
        ("adapter", m): "tune-plugin-peft"
        for m in ("lora", "dora", "rslora", "ia3", "loha", "lokr")
    },
    ("adapter", "beacon"): "tune-plugin-beacon",
    **{("quantization", q): "tune-plugin-bitsandbytes" for q in ("nf4", "fp4", "int8")},
    **{
        ("optimizer", o): "tune-plugin-bitsandbytes"
        for o in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit")
    },
    ("optimizer", "anyprecision_adamw"): "tune-plugin-anyprecision",
    ("strategy", "ddp"): "tune-plugin-ddp",
    ("strategy", "deepspeed"): "tune-plugin-deepspeed",
    ("loader", "unsloth"): "tune-plugin-unsloth",
    ("metric", "passkey"): "tune-plugin-beacon",
    ("metric", "long_ppl"): "tune-plugin-beacon",
}


class NoSettings(BaseModel):
    """Settings model for a backend that takes no keys."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Backend:
    """One named backend, as declared by one plugin."""

    kind: str
    name: str
    settings: type[BaseModel]
    plugin: str
    doc: str = ""
    for_loader: str | None = None

    @property
    def label(self) -> str:
        scope = f"@{self.for_loader}" if self.for_loader else ""
        return f"{self.kind}:{self.name}{scope}"


@dataclass
class PluginInfo:
    """What `tune plugins list` shows for one plugin."""

    name: str
    distribution: str
    version: str
    status: str = "ok"
    provides: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)


class Provide:
    """Handed to `tune_provide`: each call declares one backend of the calling plugin."""

    def __init__(self, manager: PluginManager):
        self._manager = manager

    def _declare(self, kind, name, settings, doc, for_loader) -> None:
        settings = settings or NoSettings
        if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
            raise TypeError(f"settings for {kind} '{name}' must be a pydantic model class")
        self._manager._declare(kind, name, settings, doc, for_loader)

    def loader(self, name: str, settings: type[BaseModel] | None = None, doc: str = "") -> None:
        self._declare("loader", name, settings, doc, None)

    def quantization(
        self, name: str, settings=None, doc: str = "", for_loader: str | None = None
    ) -> None:
        self._declare("quantization", name, settings, doc, for_loader)

    def adapter(self, name: str, settings=None, doc: str = "", for_loader: str | None = None):
        self._declare("adapter", name, settings, doc, for_loader)

    def data_format(self, name: str, settings=None, doc: str = "") -> None:
        self._declare("data_format", name, settings, doc, None)

    def optimizer(self, name: str, settings=None, doc: str = "") -> None:
        self._declare("optimizer", name, settings, doc, None)

    def strategy(self, name: str, settings=None, doc: str = "") -> None:
        self._declare("strategy", name, settings, doc, None)

    def metric(self, name: str, settings=None, doc: str = "") -> None:
        self._declare("metric", name, settings, doc, None)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus backend declarations, plugin status and selection."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.backends: dict[tuple[str, str, str | None], Backend] = {}
        self.conflicts: list[tuple[Backend, Backend]] = []
        self._declaring: str | None = None
        # Historic: every plugin registered from now on declares its backends as it arrives.
        self.hook.tune_provide.call_historic(kwargs={"provide": Provide(self)})

    # -- loading -----------------------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None) -> str | None:
        name = name or self.get_canonical_name(plugin)
        previous, self._declaring = self._declaring, name
        try:
            return super().register(plugin, name)
        finally:
            self._declaring = previous

    def add_plugin(self, name: str, plugin: Any, distribution: str, version: str) -> None:
        """Register one plugin object; a failure marks it broken instead of stopping tune."""
        info = self.infos[name] = PluginInfo(name, distribution, version)
        if self.is_blocked(name):
            info.status = "disabled"
            return
        try:
            self.register(plugin, name)
        except Exception as exc:  # a broken plugin only breaks runs that need it
            self._forget(name)
            if self.is_registered(plugin):
                self.unregister(plugin)
            info.status = f"error: {_one_line(exc)}"
            return
        info.hooks = sorted(
            h.name.removeprefix("tune_")
            for h in self.get_hookcallers(plugin) or []
            if h.name not in ("tune_provide", "tune_plugin_status")
        )
        status_hook = getattr(plugin, "tune_plugin_status", None)
        if callable(status_hook):
            try:
                note = status_hook()
            except Exception as exc:
                note = f"error: {_one_line(exc)}"
            if note:
                info.status = note

    def load_builtins(self) -> None:
        for name, module in BUILTIN_PLUGINS:
            self.add_plugin(name, importlib.import_module(module), "tune", __version__)

    def load_entry_points(self) -> None:
        seen: set[str] = set()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist else "?"
            version = dist.version if dist else "?"
            if self.is_blocked(ep.name):
                self.infos[ep.name] = PluginInfo(ep.name, dist_name, version, status="disabled")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self.infos[ep.name] = PluginInfo(
                    ep.name, dist_name, version, status=f"error: {_one_line(exc)}"
                )
                continue
            self.add_plugin(ep.name, plugin, dist_name, version)

    def load_module(self, module: str) -> None:
        """`-p some.module`: register a plugin module by import path (pytest's `-p` too)."""
        try:
            plugin = importlib.import_module(module)
        except Exception as exc:
            raise TuneError(
                f"cannot import plugin module '{module}' given with -p: {_one_line(exc)}.",
                fix="check the module path, or install the plugin's distribution.",
            ) from None
        self.add_plugin(module, plugin, getattr(plugin, "__package__", "") or module, "?")

    def reject_unknown_hooks(self) -> None:
        """A misspelled hook (`tune_evalute`) marks its plugin broken, loudly, with a suggestion."""
        known = [n for n in vars(hookspecs) if n.startswith("tune_")]
        for hook_name, caller in list(vars(self.hook).items()):
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                info = self.infos.get(impl.plugin_name)
                if info is not None:
                    info.status = (
                        f"error: unknown hook {hook_name}.{did_you_mean(hook_name, known)}"
                    )
                self._forget(impl.plugin_name)
                if self.get_plugin(impl.plugin_name) is not None:
                    self.unregister(name=impl.plugin_name)

    def broken(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.status.startswith("error")]

    # -- declarations ------------------------------------------------------------------------
    def _declare(self, kind, name, settings, doc, for_loader) -> None:
        plugin = self._declaring or "?"
        backend = Backend(kind, name, settings, plugin, doc.strip(), for_loader)
        key = (kind, name, for_loader)
        if key in self.backends and self.backends[key].plugin != plugin:
            self.conflicts.append((self.backends[key], backend))
        else:
            self.backends[key] = backend
        info = self.infos.get(plugin)
        if info is not None:
            info.provides.append(backend.label)

    def _forget(self, plugin: str) -> None:
        for key in [k for k, b in self.backends.items() if b.plugin == plugin]:
            del self.backends[key]

    def check_conflicts(self) -> None:
        """A name served twice in one scope is a start-up error naming both distributions."""
        if not self.conflicts:
            return
        first, second = self.conflicts[0]
        a, b = self.infos[first.plugin], self.infos[second.plugin]
        raise TuneError(
            f"{KINDS[first.kind]} '{first.name}' is provided by two plugins: "
            f"'{a.name}' ({a.distribution} {a.version}) and '{b.name}' ({b.distribution} "
            f"{b.version}). tune will not guess which one you meant.",
            fix=f"uninstall one of them (pip uninstall {b.distribution}), or disable one for "
            f"this command with -p no:{b.name}.",
        )

    def declared(self, kind: str) -> list[Backend]:
        return sorted((b for b in self.backends.values() if b.kind == kind), key=lambda b: b.name)

    def backend(
        self, kind: str, name: str, *, loader: str | None = None, where: str | None = None
    ) -> Backend:
        """The backend a recipe names, preferring one scoped to the recipe's loader."""
        if loader is not None and (kind, name, loader) in self.backends:
            return self.backends[(kind, name, loader)]
        if (kind, name, None) in self.backends:
            return self.backends[(kind, name, None)]
        names = sorted({b.name for b in self.declared(kind) if b.for_loader in (None, loader)})
        message = f"{KINDS[kind]} = '{name}' is not provided by any installed plugin."
        message += did_you_mean(name, names)
        message += f" Installed: {', '.join(names) or 'none'}."
        broken = self.broken()
        if broken:
            message += " Plugins that failed to load (one may provide it): " + "; ".join(
                f"{i.name} ({i.status})" for i in broken
            )
            message += "."
        hint = KNOWN_PROVIDERS.get((kind, name))
        fix = (
            f"pip install {hint} (or ./plugins/{hint.removeprefix('tune-plugin-')})."
            if hint
            else ("pick one of the installed names, or install the plugin that provides it.")
        )
        raise TuneError(message, where=where, fix=fix)

    # -- calling -----------------------------------------------------------------------------
    def caller(self, hook_name: str, backend: Backend) -> pluggy.HookCaller:
        """A hook caller that reaches only the plugin that declared `backend`."""
        plugin = self.get_plugin(backend.plugin)
        others = [p for _, p in self.list_name_plugin() if p is not plugin and p is not None]
        return self.subset_hook_caller(hook_name, remove_plugins=others)

    def call(self, hook_name: str, backend: Backend, **kwargs: Any) -> Any:
        result = self.caller(hook_name, backend)(**kwargs)
        if result is None:
            raise RuntimeError(
                f"plugin '{backend.plugin}' declared {backend.label} but its {hook_name} "
                "returned nothing"
            )
        return result

    def evaluate(self, names: list[str], model: Any, data: Any, ctx: Any) -> dict[str, float]:
        """Every plugin serving a requested metric is asked; duplicate keys are an error."""
        merged: dict[str, float] = {}
        owners: dict[str, str] = {}
        plugins = {self.backend("metric", n).plugin for n in names}
        for plugin_name in sorted(plugins):
            backend = next(b for b in self.backends.values() if b.plugin == plugin_name)
            mine = [n for n in names if self.backend("metric", n).plugin == plugin_name]
            result = self.caller("tune_evaluate", backend)(
                names=mine, model=model, data=data, ctx=ctx
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def get_plugin_manager(
    disable: Iterable[str] = (), extra_modules: Iterable[str] = (), *, strict: bool = True
) -> PluginManager:
    """Build the manager: built-ins, then entry points unless autoload is off, then `-p` modules.

    `disable` holds names from `-p no:NAME`. With `strict`, conflicts raise (start-up error);
    `tune plugins list` passes strict=False to show them instead.
    """
    pm = PluginManager()
    for name in disable:
        pm.set_blocked(name)
    pm.load_builtins()
    if os.environ.get(AUTOLOAD_ENV, "").strip() not in ("1", "true", "yes"):
        pm.load_entry_points()
    for module in extra_modules:
        pm.load_module(module)
    pm.reject_unknown_hooks()
    pm.check_pending()
    if strict:
        pm.check_conflicts()
    return pm


def split_plugin_options(options: Iterable[str]) -> tuple[list[str], list[str]]:
    """`-p no:NAME` disables NAME; `-p module.path` loads that module as a plugin."""
    disable, modules = [], []
    for opt in options:
        (disable if opt.startswith("no:") else modules).append(opt.removeprefix("no:"))
    return disable, modules
