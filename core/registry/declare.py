"""Backend declarations: what `tune_provide` receives, and what the manager keeps of it.

Imports no torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from tune.contract.settings import Settings
from tune.registry.kinds import KINDS, LM_EXAMPLES

if TYPE_CHECKING:  # pragma: no cover
    from tune.registry.manager import PluginManager

CATALOG = Path(__file__).parent.parent / "assets" / "catalog.toml"


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
    examples: str | None = None  # formats: the example kind produced; objectives: consumed
    requires: tuple[str, ...] = ()  # modules it imports when used (checked with find_spec)
    schemes: tuple[str, ...] = ()  # data sources: address schemes it reads ("hf" for hf://...)

    def missing(self) -> str | None:
        """The first required module that is not installed here, or None (imports nothing)."""
        import importlib.util

        return next((m for m in self.requires if importlib.util.find_spec(m) is None), None)

    @property
    def label(self) -> str:
        scope = f"@{self.for_loader}" if self.for_loader else ""
        return f"{self.kind}:{self.name}{scope}"

    @property
    def where(self) -> str:
        return KINDS[self.kind].where


class Provide:
    """Handed to `tune_provide`: each call declares one backend of the calling plugin.

    Options: `requires=` (every kind), `for_loader=` (quantization, adapter: serve this name for
    that loader only), `examples=` (data formats and objectives: the example kind), `schemes=`
    (data sources: address schemes they read, e.g. ("hf",) for `train = "hf://org/name"`).

    `requires` names the modules the backend imports when used (e.g. ("mlflow",)): where one is
    missing, tune lists the plugin with a STATUS saying so and refuses recipes that use the
    backend at validation, while the plugin still loads and its other backends work.
    """

    def __init__(self, manager: PluginManager):
        self._manager = manager

    def _declare(self, kind: str, name: str, settings, doc: str, options: dict) -> None:
        allowed = {"requires"} | ({"examples"} if KINDS[kind].has_examples else set())
        allowed |= {"for_loader"} if kind in ("quantization", "adapter") else set()
        allowed |= {"schemes"} if kind == "data_source" else set()
        unknown = set(options) - allowed
        if unknown:
            raise TypeError(f"provide.{kind}() got unexpected options {sorted(unknown)}")
        settings = settings or NoSettings
        if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
            raise TypeError(f"settings for {kind} '{name}' must be a pydantic model class")
        requires = options.get("requires", ())
        backend = Backend(
            kind,
            name,
            settings,
            "?",
            doc.strip(),
            for_loader=options.get("for_loader"),
            examples=(options.get("examples") or LM_EXAMPLES) if KINDS[kind].has_examples else None,
            requires=(requires,) if isinstance(requires, str) else tuple(requires),
            schemes=tuple(options.get("schemes", ())),
        )
        self._manager._declare(backend)

    def loader(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[model] loader = name`: loads the model and tokenizer."""
        self._declare("loader", name, settings, doc, options)

    def quantization(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[model] quantize = name`, settings in `[model.quantization]`; `for_loader=`."""
        self._declare("quantization", name, settings, doc, options)

    def adapter(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[[adapt]] method = name`: one step of the adapt chain; `for_loader=`."""
        self._declare("adapter", name, settings, doc, options)

    def data_source(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[data.source] name = name`: where rows come from (default "files")."""
        self._declare("data_source", name, settings, doc, options)

    def data_format(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[data] format = name`: rows to examples of kind `examples=` (default "lm")."""
        self._declare("data_format", name, settings, doc, options)

    def optimizer(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[optimizer] name = name`."""
        self._declare("optimizer", name, settings, doc, options)

    def objective(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[objective] name = name`: the loss of a step, over examples of kind `examples=`."""
        self._declare("objective", name, settings, doc, options)

    def strategy(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[strategy] name = name`."""
        self._declare("strategy", name, settings, doc, options)

    def metric(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """A name in `[eval] metrics`, settings in `[eval.<name>]`."""
        self._declare("metric", name, settings, doc, options)

    def tracker(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`[[track]] name = name`: receives the run's events (main process only)."""
        self._declare("tracker", name, settings, doc, options)

    def exporter(self, name: str, settings=None, doc: str = "", **options: Any) -> None:
        """`tune export --format name`: writes a trained model in another format."""
        self._declare("exporter", name, settings, doc, options)


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, dict]:
    """Known distributions and the backends they serve (core/assets/catalog.toml)."""
    from tune.recipe.toml import tomllib

    return tomllib.loads(CATALOG.read_text(encoding="utf-8"))


def install_hint(kind: str, name: str) -> str | None:
    """`pip install ...` for the distribution the catalog says serves `kind` `name`, or None."""
    for dist, entry in catalog().items():
        if name in entry.get(kind, ()):
            folder = entry.get("folder")
            local = f" (or ./{folder} from a tune checkout)" if folder else ""
            return f"pip install {dist}{local}."
    return None
