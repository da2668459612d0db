"""Backend declarations: what `tune_provide` receives, and what the manager keeps of it.

Imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from tune.contract.capabilities import Capabilities, CapabilitiesSpec, resolve
from tune.contract.settings import Settings
from tune.registry.kinds import KINDS, LM_EXAMPLES

if TYPE_CHECKING:  # pragma: no cover
    from tune.registry.manager import PluginManager


class NoSettings(Settings):
    """Settings model of a backend that takes no keys."""


@dataclass(frozen=True)
class Backend:
    """One named backend, as declared by one plugin."""

    kind: str
    name: str
    settings: type[BaseModel]
    plugin: str
    doc: str = ""
    for_loader: str | None = None
    examples: str | None = None  # formats: produced; objectives: consumed; metrics: scored
    requires: tuple[str, ...] = ()  # modules it imports when used (checked with find_spec)
    schemes: tuple[str, ...] = ()  # data sources: address schemes it reads ("hf" for hf://...)
    build: Callable[..., Any] | None = None  # object kinds: called as build(settings, ctx)
    capabilities: CapabilitiesSpec = None
    estimate: Callable[..., Any] | None = None  # its `tune estimate` terms (tune.estimate)
    preload: tuple[str, ...] = ()  # loaders: modules imported first in `tune run`
    recognizes: Callable[[Any], Any] | None = None  # adapters: another tool's artifact dir

    def missing(self) -> str | None:
        """The first required module that is not installed here, or None (imports nothing)."""
        import importlib.util

        return next((m for m in self.requires if importlib.util.find_spec(m) is None), None)

    def capabilities_for(self, settings: Any) -> Capabilities:
        return resolve(self.capabilities, settings)

    @property
    def label(self) -> str:
        scope = f"@{self.for_loader}" if self.for_loader else ""
        return f"{self.kind}:{self.name}{scope}"

    @property
    def where(self) -> str:
        return KINDS[self.kind].where


COMMON_OPTIONS = {"requires", "capabilities", "estimate"}


class Provide:
    """Handed to `tune_provide`: each call declares one backend of the calling plugin.

    `provide.<kind>(name, settings=None, doc="", **options)`. Options every kind accepts:
    `requires=` (modules it imports when used: where one is missing, `tune plugins list` says
    so and recipes using the backend are refused at validation), `capabilities=` (a
    `Capabilities`, or a function of the validated settings returning one) and `estimate=`
    (its memory terms for `tune estimate`). Object kinds (quantization, data_source, objective,
    tracker, exporter, reward, rollout) need `build=` (a class or factory called as `build(settings, ctx)`).
    Kind-specific: `for_loader=` (quantization, adapter: serve this name for that loader only),
    `examples=` (formats, objectives: the example kind), `schemes=` (data sources: address
    schemes, e.g. ("hf",) for `train = "hf://org/name"`), `preload=` (loaders: modules to
    import first thing in `tune run`, before torch and transformers), `recognizes=` (adapters:
    a function of a directory returning the recipe table that rebuilds another tool's artifact,
    or None).
    """

    def __init__(self, manager: PluginManager):
        self._manager = manager

    def _declare(self, kind: str, name: str, settings, doc: str, options: dict) -> None:
        spec = KINDS[kind]
        allowed = COMMON_OPTIONS | set(spec.options)
        allowed |= {"examples"} if spec.has_examples else set()
        allowed |= {"build"} if spec.base else set()
        unknown = set(options) - allowed
        if unknown:
            raise TypeError(
                f"provide.{kind}() got unexpected options {sorted(unknown)} "
                f"(it accepts {sorted(allowed)})"
            )
        settings = settings or NoSettings
        if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
            raise TypeError(f"settings for {kind} '{name}' must be a pydantic model class")
        build = options.get("build")
        if spec.base and not callable(build):
            raise TypeError(
                f"provide.{kind}('{name}') needs build=: the {spec.base} class (or a factory "
                "taking settings and ctx) the core builds for a recipe that names it"
            )
        capabilities = options.get("capabilities")
        if capabilities is not None and not (
            isinstance(capabilities, Capabilities) or callable(capabilities)
        ):
            raise TypeError(f"capabilities for {kind} '{name}' must be a Capabilities or function")
        requires = options.get("requires", ())
        backend = Backend(
            kind,
            name,
            settings,
            "?",
            doc.strip(),
            for_loader=options.get("for_loader"),
            examples=(options.get("examples") or LM_EXAMPLES) if spec.has_examples else None,
            requires=(requires,) if isinstance(requires, str) else tuple(requires),
            schemes=tuple(options.get("schemes", ())),
            build=build,
            capabilities=capabilities,
            estimate=options.get("estimate"),
            preload=tuple(options.get("preload", ())),
            recognizes=options.get("recognizes"),
        )
        self._manager._declare(backend)

    def loader(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[model] loader = name`: loads the model and tokenizer (`tune_load_model`)."""
        self._declare("loader", name, settings, doc, options)

    def quantization(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[model] quantize = name`, settings in `[model.quantization]`; `build=` a
        `Quantization`; `for_loader=`."""
        self._declare("quantization", name, settings, doc, options)

    def adapter(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[[adapt]] method = name`: one step of the adapt chain (`tune_adapt_model`)."""
        self._declare("adapter", name, settings, doc, options)

    def data_source(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[data.source] name = name`: where rows come from; `build=` a `DataSource`."""
        self._declare("data_source", name, settings, doc, options)

    def data_format(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[data] format = name`: rows to examples of kind `examples=` (`tune_format_data`)."""
        self._declare("data_format", name, settings, doc, options)

    def optimizer(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[optimizer] name = name` (`tune_build_optimizer`)."""
        self._declare("optimizer", name, settings, doc, options)

    def objective(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[objective] name = name`: the loss of a step; `build=` an `Objective`."""
        self._declare("objective", name, settings, doc, options)

    def strategy(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[strategy] name = name` (`tune_choose_strategy`)."""
        self._declare("strategy", name, settings, doc, options)

    def metric(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """A name in `[eval] metrics`, settings in `[eval.<name>]` (`tune_evaluate`)."""
        self._declare("metric", name, settings, doc, options)

    def tracker(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[[track]] name = name`: receives the run's events; `build=` a `Tracker`."""
        self._declare("tracker", name, settings, doc, options)

    def exporter(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`tune export --format name`: writes a trained model; `build=` an `Exporter`."""
        self._declare("exporter", name, settings, doc, options)

    def reward(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[[reward]] name = name`: one float per completion (online RL); `build=` a
        `Reward`."""
        self._declare("reward", name, settings, doc, options)

    def rollout(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[rollout] name = name`: the engine that samples completions during training;
        `build=` a `Rollout`."""
        self._declare("rollout", name, settings, doc, options)
