"""Plugin manager: built-ins and entry points (group "tune") through one mechanism.

Built-in backends are modules registered exactly like third-party plugins; the only difference
is where the module name comes from. Each plugin declares its backends in `tune_provide`; the
core then calls the one declaring plugin for each backend through `subset_hook_caller`, so who
answered is never a matter of registration order. At registration a plugin is checked against
the plugin API range it declares (`TUNE_API`) and against the hooks its backends require
(`tune.registry.kinds`). Imports no torch.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from tune import PLUGIN_API, __version__
from tune.errors import TuneError, did_you_mean
from tune.registry import hookspecs
from tune.registry.calls import Calls
from tune.registry.catalog import install_hint
from tune.registry.declare import Backend, Provide
from tune.registry.kinds import KINDS

ENTRY_POINT_GROUP = "tune"
AUTOLOAD_ENV = "TUNE_DISABLE_PLUGIN_AUTOLOAD"

# (plugin name, module). Registered like any entry point, distribution "tune".
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("transformers", "tune.builtin.loader"),
    ("files", "tune.builtin.files"),
    ("formats", "tune.builtin.formats"),
    ("adamw", "tune.builtin.optim"),
    ("causal_lm", "tune.builtin.objective"),
    ("single", "tune.builtin.single"),
    ("jsonl", "tune.builtin.jsonl"),
    ("perplexity", "tune.builtin.metrics"),
)


@dataclass
class PluginInfo:
    """What `tune plugins list` shows for one plugin."""

    name: str
    distribution: str
    version: str
    status: str = "ok"
    provides: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)


class PluginManager(Calls, pluggy.PluginManager):
    """pluggy's manager plus backend declarations, plugin status and selection."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.backends: dict[tuple[str, str, str | None], Backend] = {}
        self.conflicts: list[tuple[Backend, Backend]] = []
        self.contract_errors: list[tuple[str, str]] = []  # (plugin, what is missing)
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
        mismatch = api_mismatch(plugin)
        if mismatch:
            info.status = mismatch
            return
        try:
            self.register(plugin, name)
        except Exception as exc:  # a broken plugin only breaks runs that need it
            self._forget(name)
            if self.is_registered(plugin):
                self.unregister(plugin)
            info.status = f"error: {_one_line(exc)}"
            return
        implemented = self.implemented(name)
        info.hooks = sorted(
            h.removeprefix("tune_")
            for h in implemented
            if h not in ("tune_provide", "tune_plugin_status")
        )
        info.hooks += sorted(
            {f"build {b.kind}" for b in self.backends.values() if b.plugin == name and b.build}
        )
        self._check_contract(name, implemented)
        missing = sorted(
            {m for b in self.backends.values() if b.plugin == name and (m := b.missing())}
        )
        if missing and info.status == "ok":
            info.status = f"{', '.join(missing)} not installed: pip install {distribution}"
        status_hook = getattr(plugin, "tune_plugin_status", None)
        if callable(status_hook) and info.status == "ok":
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
        return [i for i in self.infos.values() if i.status.startswith(("error", "incompatible"))]

    def implemented(self, plugin_name: str) -> set[str]:
        """Names of the hooks a registered plugin implements."""
        plugin = self.get_plugin(plugin_name)
        return {h.name for h in self.get_hookcallers(plugin) or []} if plugin else set()

    # -- declarations ------------------------------------------------------------------------
    def _declare(self, backend: Backend) -> None:
        from dataclasses import replace

        backend = replace(backend, plugin=self._declaring or "?")
        key = (backend.kind, backend.name, backend.for_loader)
        if key in self.backends and self.backends[key].plugin != backend.plugin:
            self.conflicts.append((self.backends[key], backend))
        else:
            self.backends[key] = backend
        info = self.infos.get(backend.plugin)
        if info is not None:
            info.provides.append(backend.label)

    def _check_contract(self, plugin_name: str, implemented: set[str]) -> None:
        """Each backend the plugin declared needs its kind's required hook (object kinds were
        checked for `build=` when declared)."""
        for backend in [b for b in self.backends.values() if b.plugin == plugin_name]:
            missing = [h for h in KINDS[backend.kind].required if h not in implemented]
            if missing:
                text = (
                    f"plugin '{plugin_name}' declares {backend.kind} '{backend.name}' but "
                    f"implements no {', '.join(missing)}"
                )
                self.contract_errors.append((plugin_name, text))
                self.infos[plugin_name].status = f"error: {text}"

    def _forget(self, plugin: str) -> None:
        for key in [k for k, b in self.backends.items() if b.plugin == plugin]:
            del self.backends[key]

    def check_startup(self) -> None:
        """Conflicts and broken contracts are start-up errors naming who is at fault."""
        if self.contract_errors:
            plugin_name, text = self.contract_errors[0]
            info = self.infos[plugin_name]
            raise TuneError(
                f"{text} ({info.distribution} {info.version}), which that "
                "kind of backend requires (see docs/writing-plugins.md).",
                fix=f"implement the hook in the plugin, or disable it with -p no:{info.name} "
                f"(pip uninstall {info.distribution}).",
            )
        if not self.conflicts:
            return
        first, second = self.conflicts[0]
        a, b = self.infos[first.plugin], self.infos[second.plugin]
        raise TuneError(
            f"{first.where} '{first.name}' is provided by two plugins: "
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
        message = f"{KINDS[kind].where} = '{name}' is not provided by any installed plugin."
        message += did_you_mean(name, names)
        message += f" Installed: {', '.join(names) or 'none'}."
        broken = self.broken()
        if broken:
            message += " Plugins that failed to load (one may provide it): " + "; ".join(
                f"{i.name} ({i.status})" for i in broken
            )
            message += "."
        fix = install_hint(kind, name) or (
            "pick one of the installed names, or install the plugin that provides it."
        )
        raise TuneError(message, where=where, fix=fix)


def api_mismatch(plugin: Any) -> str | None:
    """STATUS for a plugin built for another plugin API range (`TUNE_API = ">=1,<2"`), or None."""
    wanted = getattr(plugin, "TUNE_API", None)
    if not wanted:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        ok = SpecifierSet(str(wanted)).contains(PLUGIN_API, prereleases=True)
    except InvalidSpecifier:
        return f"error: TUNE_API = {wanted!r} is not a version range like '>=1,<2'"
    if ok:
        return None
    return (
        f"incompatible: built for tune plugin API {wanted}, this tune has {PLUGIN_API}; "
        "upgrade the plugin (or tune)"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def get_plugin_manager(
    disable: Iterable[str] = (),
    extra_modules: Iterable[str] = (),
    *,
    plugins: Iterable[tuple[str, Any]] = (),
    strict: bool = True,
) -> PluginManager:
    """Build the manager: built-ins, entry points unless autoload is off, `-p` modules, then
    `plugins` ((name, object) pairs registered as they are: tune embedded in a program, tests).

    `disable` holds names from `-p no:NAME`. With `strict`, conflicts and plugins missing a
    required hook raise (start-up error); `tune plugins list` passes strict=False to show them.
    """
    pm = PluginManager()
    for name in disable:
        pm.set_blocked(name)
    pm.load_builtins()
    if os.environ.get(AUTOLOAD_ENV, "").strip() not in ("1", "true", "yes"):
        pm.load_entry_points()
    for module in extra_modules:
        pm.load_module(module)
    for name, plugin in plugins:
        pm.add_plugin(name, plugin, "(in-process)", "?")
    pm.reject_unknown_hooks()
    pm.check_pending()
    if strict:
        pm.check_startup()
    return pm


def split_plugin_options(options: Iterable[str]) -> tuple[list[str], list[str]]:
    """`-p no:NAME` disables NAME; `-p module.path` loads that module as a plugin."""
    disable, modules = [], []
    for opt in options:
        (disable if opt.startswith("no:") else modules).append(opt.removeprefix("no:"))
    return disable, modules
