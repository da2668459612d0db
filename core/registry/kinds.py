"""The backend kinds: where a recipe chooses each, and the hooks a provider must implement.

One table, read by the plugin manager (to refuse a plugin that declares a backend without its
required hooks), by error messages (to say where a backend is chosen) and by the docs. A hook
listed as optional has a working default, or the core raises a `TuneError` saying that this
backend does not support the operation. Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One kind of backend: its recipe selector and its hook contract."""

    name: str
    where: str  # where a recipe chooses it, as shown in messages
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    # True when the kind's declarations say what example kind they produce or consume.
    has_examples: bool = False


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("strategy", "[strategy] name", ("tune_choose_strategy",)),
        Kind(
            "loader",
            "[model] loader",
            ("tune_load_model", "tune_load_tokenizer"),
            ("tune_load_for_inference", "tune_prepare_generation"),
        ),
        Kind(
            "quantization",
            "[model] quantize",
            ("tune_quantization_config",),
            ("tune_prepare_quantized_model", "tune_logical_numel"),
        ),
        Kind("adapter", "[[adapt]] method", ("tune_adapt_model",), ("tune_merge_adapter",)),
        Kind("data_source", "[data.source] name", ("tune_open_data_source",)),
        Kind("data_format", "[data] format", ("tune_format_data",), has_examples=True),
        Kind("optimizer", "[optimizer] name", ("tune_build_optimizer",)),
        Kind("objective", "[objective] name", ("tune_build_objective",), has_examples=True),
        Kind("metric", "[eval] metrics", ("tune_evaluate",)),
        Kind("tracker", "[[track]] name", ("tune_build_tracker",)),
        Kind("exporter", "tune export --format", ("tune_export",)),
    )
}

# The example kind every built-in format produces and the default objective trains on:
# {"input_ids": [...], "labels": [...]} with labels -100 where nothing is trained.
LM_EXAMPLES = "lm"
