"""THE contract between the core and every plugin.

Each hook is prefixed `tune_`. A plugin implements any subset with `@hookimpl`, and may accept
fewer arguments than the spec. Backend hooks (load, adapt, format, optimizer, strategy,
quantization) are called by the core on exactly one plugin, the one that declared the backend
name the recipe asks for (through `PluginManager.subset_hook_caller`), so `firstresult` only
means "the answer of that one plugin". This module imports nothing heavy: no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pydantic import BaseModel
    from tune.context import RunContext
    from tune.plugins import Provide

PROJECT = "tune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(historic=True)
def tune_provide(provide: Provide) -> None:
    """Declare the named backends this plugin serves, once, when the plugin is registered.

    Call `provide.loader(name, SettingsModel, doc=...)` and likewise `.quantization`,
    `.adapter`, `.data_format`, `.optimizer`, `.strategy`, `.metric`. The settings model is a
    pydantic model that validates the recipe keys of that backend (unknown keys rejected).
    `for_loader="unsloth"` scopes a declaration to one loader: it then wins over the general
    provider of the same name for that loader only. Historic: plugins registered later are
    still asked. Two plugins declaring the same name in the same scope is a start-up error.
    """


@hookspec(firstresult=True)
def tune_choose_strategy(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return a `tune.train.strategy.Strategy` for `[strategy] name`. Called once, before loading.

    Only the declaring plugin is called. The strategy owns process groups, device placement,
    model wrapping, backward/step and its own checkpoint shards.
    """


@hookspec(firstresult=True)
def tune_quantization_config(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return a transformers quantization config for `[model] quantize = name`.

    Called once before `tune_load_model`; the result is put on `ctx.quantization_config`,
    where the loader reads it. Only the declaring plugin is called.
    """


@hookspec(firstresult=True)
def tune_load_model(name: str, settings: BaseModel, ctx: RunContext) -> tuple[Any, Any]:
    """Return `(model, tokenizer)` for `[model] loader = name`. Called once.

    The model is on CPU or already placed as the loader sees fit; the strategy moves it.
    Only the declaring plugin is called.
    """


@hookspec(firstresult=True)
def tune_adapt_model(name: str, settings: BaseModel, model: Any, ctx: RunContext) -> Any:
    """Return the adapted model for one `[[adapt]] method = name` step.

    Called once per step, in recipe order, each on the previous step's result (a chain:
    beacon, then LoRA). Only the declaring plugin is called.
    """


@hookspec(firstresult=True)
def tune_format_data(name: str, settings: BaseModel, tokenizer: Any, ctx: RunContext) -> Any:
    """Return a `tune.data.Examples` (tokenized train and eval examples) for `[data] format`.

    Called once. Each example is a dict with `input_ids` and `labels` (-100 = not trained).
    Only the declaring plugin is called.
    """


@hookspec(firstresult=True)
def tune_build_optimizer(name: str, settings: BaseModel, params: list, ctx: RunContext) -> Any:
    """Return a torch optimizer over `params` for `[optimizer] name`. Called once.

    `params` is a list of parameter-group dicts (weight decay already split).
    Only the declaring plugin is called.
    """


@hookspec
def tune_evaluate(
    names: list[str], model: Any, data: Any, ctx: RunContext
) -> dict[str, float] | None:
    """Compute the requested metrics this plugin provides; return `{key: value}` or None.

    Called at each eval point on every plugin that declared one of `names` (as a metric).
    The dicts are merged into one; a key returned by two plugins is an error.
    """


@hookspec(firstresult=True)
def tune_validate_data(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Check `[data]` files and their schema for `format = name` without a tokenizer or torch.

    Called by `tune validate` and at the start of `tune run`; raise `TuneError` naming the
    file and line. Return a short summary string (e.g. "120 rows"). Optional for a format.
    """


@hookspec(firstresult=True)
def tune_prepare_quantized_model(
    name: str, settings: BaseModel, model: Any, ctx: RunContext
) -> Any:
    """Return the loaded quantized model made ready for training (k-bit preparation).

    Called once, right after `tune_load_model` and before the adapt chain, on the plugin that
    declared `[model] quantize = name`. Return the model unchanged if nothing is needed.
    """


@hookspec(firstresult=True)
def tune_merge_adapter(
    name: str, settings: BaseModel, model: Any, adapter_dir: str, ctx: RunContext
) -> Any:
    """Return `model` with the trained `[[adapt]] method = name` weights from `adapter_dir` applied.

    Used by `tune merge` and `tune chat`: the core reloads the base in 16-bit (never quantized),
    calls this for each adapt step in recipe order on its declaring plugin, then saves (merge) or
    talks to (chat) the result. Merge into the base weights where the method allows it; a method
    that changes the forward (beacon) attaches itself with its trained weights instead.
    """


@hookspec
def tune_check_recipe(recipe: Any) -> None:
    """Refuse a combination of backends this plugin knows cannot work, before anything loads.

    Called on every plugin after the recipe's backends are chosen (by `tune validate` and
    `tune run`); raise `TuneError` saying why and what to change. Check only your own concerns.
    """


@hookspec
def tune_plugin_status() -> str | None:
    """One line for STATUS in `tune plugins list` when the plugin cannot work here (else None).

    Must be cheap and import no torch (e.g. "needs a CUDA GPU"). Called on every plugin.
    """


@hookspec
def tune_run_start(recipe: Any) -> None:
    """Called on every plugin at the very start of `tune run`, before torch or transformers load.

    For what must happen first (Unsloth must be imported before transformers).
    """


@hookspec(firstresult=True)
def tune_prepare_generation(name: str, settings: BaseModel, model: Any, ctx: RunContext) -> Any:
    """Return the model ready for the closing sample generation (e.g. a fast inference mode).

    Called on the plugin that declared `[model] loader = name`; optional.
    """


@hookspec(firstresult=True)
def tune_load_tokenizer(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return only the tokenizer of `[model] loader = name` (for `tune data preview/stats`).

    Called on the loader's plugin; must not load model weights.
    """


@hookspec
def tune_save_extras(model: Any, path: Any, ctx: RunContext) -> None:
    """Write what a plugin added to the model beside the final artifact (main process only).

    Called on every plugin after the strategy saved `final/` (into its temp dir `path`), e.g.
    the beacon plugin's own weights, which a PEFT adapter or plain transformers would not keep.
    """
