"""The backend kinds: where a recipe chooses each, and its one required entry point.

The six design kinds are served by a hook (`tune_load_model`, ...). Every other kind is an
object the core builds from the class the plugin declared with `build=`, an instance of the
contract class named here. One table, read by the plugin manager (to refuse a declaration
without its entry point), by error messages (where a backend is chosen) and by the docs.
Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One kind of backend: its recipe selector and its entry point."""

    name: str
    where: str  # where a recipe chooses it, as shown in messages
    hook: str | None = None  # the required hook (hook kinds)
    base: str | None = None  # the contract class `build=` returns (object kinds), in tune.plugin
    optional: tuple[str, ...] = ()  # optional hooks
    # True when the kind's declarations say what example kind they produce, consume or score.
    has_examples: bool = False
    # Declaration options this kind accepts besides doc, requires, capabilities and estimate.
    options: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        return (self.hook,) if self.hook else ()


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("strategy", "[strategy] name", hook="tune_choose_strategy"),
        Kind("loader", "[model] loader", hook="tune_load_model", options=("preload",)),
        Kind(
            "adapter",
            "[[adapt]] method",
            hook="tune_adapt_model",
            optional=("tune_merge_adapter",),
            options=("for_loader", "recognizes"),
        ),
        Kind("data_format", "[data] format", hook="tune_format_data", has_examples=True),
        Kind("optimizer", "[optimizer] name", hook="tune_build_optimizer"),
        Kind("metric", "[eval] metrics", hook="tune_evaluate"),
        Kind("quantization", "[model] quantize", base="Quantization", options=("for_loader",)),
        Kind("data_source", "[data.source] name", base="DataSource", options=("schemes",)),
        Kind("objective", "[objective] name", base="Objective", has_examples=True),
        Kind("tracker", "[[track]] name", base="Tracker"),
        Kind("exporter", "tune export --format", base="Exporter"),
        # Online RL: what scores a completion, and the engine that samples completions.
        Kind("reward", "[[reward]] name", base="Reward"),
        Kind("rollout", "[rollout] name", base="Rollout"),
    )
}

# The example kind every built-in format produces and the default objective trains on:
# {"input_ids": [...], "labels": [...]} with labels -100 where nothing is trained.
LM_EXAMPLES = "lm"
