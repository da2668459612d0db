"""THE contract between the core and every plugin, in the order a run meets the hooks.

    discover   tune_provide, tune_plugin_status
    validate   tune_check_recipe
    set up     tune_run_start, tune_choose_strategy
    load       tune_quantization_config, tune_load_model, tune_prepare_quantized_model,
               tune_logical_numel, tune_load_tokenizer
    adapt      tune_adapt_model
    data       tune_open_data_source, tune_format_data
    optimize   tune_build_optimizer, tune_build_objective
    loop       tune_build_tracker (its Tracker gets start, each step, eval, checkpoint, samples, end)
    save       tune_save_extras
    eval       tune_evaluate
    end        tune_prepare_generation (closing samples)
    after      tune_recipe_for_artifact, tune_load_for_inference, tune_merge_adapter
               (`tune merge`, `tune chat`: a trained run loaded back), tune_export
               (`tune export`, `tune push --gguf`: the merged model written in another format)

Two calling styles:
- **Backend hooks** take `name` and `settings` first. The core calls them on exactly one plugin,
  the one that declared the backend the recipe names (`firstresult` then only means "that
  plugin's answer"). Which hooks each backend kind must implement is in `tune.registry.kinds`: a plugin
  that declares a backend without them is refused at start-up.
- **Broadcast hooks** (`tune_plugin_status`, `tune_check_recipe`, `tune_run_start`,
  `tune_save_extras`, `tune_recipe_for_artifact`) are called on every plugin; each checks
  whether the call concerns it.

An implementation may accept fewer arguments than its spec. Arguments are only ever added.
This module imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pydantic import BaseModel
    from tune.contract.context import RunContext
    from tune.recipe import Recipe
    from tune.registry.manager import Provide

PROJECT = "tune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- discover ------------------------------------------------------------------------------------
@hookspec(historic=True)
def tune_provide(provide: Provide) -> None:
    """Declare the named backends this plugin serves. Once per plugin, when it is registered.

    Call `provide.<kind>(name, SettingsModel, doc=...)` for each backend: `loader`,
    `quantization`, `adapter`, `data_source`, `data_format`, `optimizer`, `objective`,
    `strategy`, `metric`, `tracker`, `exporter`. The settings model is a pydantic model (base it
    on `tune.plugin.Settings`) that validates the backend's recipe keys; unknown keys are rejected.
    `for_loader="unsloth"` scopes a quantization or adapter to one loader, where it wins over the
    general provider of the same name. `examples=` (formats and objectives) names the example
    kind produced or consumed ("lm" by default). Two plugins declaring one name in one scope is
    a start-up error. Historic: a plugin registered later is still asked.
    """


@hookspec
def tune_plugin_status() -> str | None:
    """One line for STATUS in `tune plugins list` when the plugin cannot work here, else None.

    Broadcast, at start-up. Must be cheap and import no torch (e.g. "needs a CUDA GPU").
    """


# -- validate --------------------------------------------------------------------------------------
@hookspec
def tune_check_recipe(recipe: Recipe) -> None:
    """Refuse a combination of backends that cannot work, before anything loads.

    Broadcast, after the recipe's backends are chosen and their settings validated (by
    `tune validate` and `tune run`). Raise `TuneError` saying why and what to change; check
    only your own concerns.
    """


# -- set up ----------------------------------------------------------------------------------------
@hookspec
def tune_run_start(recipe: Recipe) -> None:
    """First thing in `tune run`, before torch or transformers are imported. Broadcast.

    For what must happen first (Unsloth must be imported before transformers).
    """


@hookspec(firstresult=True)
def tune_choose_strategy(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return a `tune.plugin.Strategy` for `[strategy] name`. Once, before loading.

    The strategy owns process groups, device placement, model wrapping, backward/step, the
    accumulation boundary, reductions for logging and its own checkpoint shards.
    """


# -- load ------------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_quantization_config(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return the quantization config for `[model] quantize = name`. Once, before loading.

    The core puts it on `ctx.quantization_config`, where the loader reads it.
    """


@hookspec(firstresult=True)
def tune_load_model(name: str, settings: BaseModel, ctx: RunContext) -> tuple[Any, Any]:
    """Return `(model, tokenizer)` for `[model] loader = name`. Once.

    The model is on CPU or already placed as the loader sees fit; the strategy moves it.
    The tokenizer has a pad token.
    """


@hookspec(firstresult=True)
def tune_prepare_quantized_model(
    name: str, settings: BaseModel, model: Any, ctx: RunContext
) -> Any:
    """Return the just-loaded quantized model made ready for training (k-bit preparation).

    Once, right after `tune_load_model`, before the adapt chain. Optional: the default keeps
    the model as loaded.
    """


@hookspec(firstresult=True)
def tune_logical_numel(name: str, settings: BaseModel, param: Any) -> int:
    """How many values a (possibly packed) parameter of a quantized model holds.

    For the parameter counts shown and saved in the summary. Optional: the default is
    `param.numel()`, which undercounts packed 4-bit storage.
    """


@hookspec(firstresult=True)
def tune_load_tokenizer(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return only the tokenizer of `[model] loader = name`, without loading weights.

    For `tune data preview/stats`. Required of every loader.
    """


# -- adapt -----------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_adapt_model(name: str, settings: BaseModel, model: Any, ctx: RunContext) -> Any:
    """Return the adapted model for one `[[adapt]] method = name` step.

    Once per step, in recipe order, each on the previous step's result (a chain: beacon, then
    LoRA). A step that must keep some weights trainable whatever later steps freeze appends
    name fragments to `ctx.keep_trainable`.
    """


# -- data ------------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_open_data_source(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return a `tune.plugin.DataSource` for `[data.source] name` (default "files").

    Once per data entry ([data] and each [[data.mix]]), at validation and at run time, without
    torch. The source says where rows come from; the core reads, splits, caches and streams.
    """


@hookspec(firstresult=True)
def tune_format_data(name: str, settings: BaseModel, tokenizer: Any, ctx: RunContext) -> Any:
    """Return a `tune.plugin.DataFormat` for `[data] format = name`: rows in, examples out.

    Once per data entry. `tokenizer` is None at validation (`tune validate`), when only the
    format's `check` runs; no torch may be imported then. The format object must be picklable:
    with `[data] num_proc > 1` it is sent to tokenization workers.
    """


# -- optimize --------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_build_optimizer(name: str, settings: BaseModel, params: list, ctx: RunContext) -> Any:
    """Return a torch optimizer over `params` for `[optimizer] name`. Once.

    `params` is a list of parameter-group dicts, weight decay already split (no decay on
    biases and norms).
    """


@hookspec(firstresult=True)
def tune_build_objective(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return a `tune.plugin.Objective` for `[objective] name` (default "causal_lm"). Once.

    The objective turns micro-batches into summed losses and says what it normalizes by; the
    core keeps accumulation and multi-rank normalization exact.
    """


# -- loop events -----------------------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_build_tracker(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return a `tune.plugin.Tracker` for one `[[track]] name` table. Main process only.

    The tracker receives the run's start, every logged train step, each eval, checkpoint,
    generation samples and the end. A tracker that raises is warned about once and dropped;
    the run goes on and metrics.jsonl (the built-in tracker) keeps everything.
    """


# -- save ------------------------------------------------------------------------------------------
@hookspec
def tune_save_extras(model: Any, path: Any, ctx: RunContext) -> None:
    """Write what the plugin added to the model beside the final artifact. Main process only.

    Broadcast, after the strategy saved `final/` (into its temporary directory `path`), and by
    `tune merge` beside the merged model: e.g. the beacon's own weights, which a PEFT adapter or
    plain transformers would not keep.
    """


# -- eval ------------------------------------------------------------------------------------------
@hookspec
def tune_evaluate(
    names: list[str], settings: dict[str, BaseModel], model: Any, data: Any, ctx: RunContext
) -> dict[str, float] | None:
    """Compute the requested metrics this plugin provides; return `{key: value}`.

    At each eval point, on every plugin that declared one of `names`; `settings` maps each of
    those names to its validated `[eval.<name>]` settings. `data` is a `tune.plugin.EvalData`.
    The dicts are merged into one; a key returned by two plugins is an error.
    """


# -- end -------------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_prepare_generation(name: str, settings: BaseModel, model: Any, ctx: RunContext) -> Any:
    """Return the model ready for the closing sample generation (e.g. a fast inference mode).

    On the plugin that declared `[model] loader = name`. Optional: the default is the model.
    """


# -- after a run: merge, chat ----------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_recipe_for_artifact(path: Any) -> dict[str, Any] | None:
    """For a directory tune did not write (no recipe.toml): a recipe table that rebuilds it.

    Broadcast (first answer wins). Return at least `{"model": {"path": base},
    "adapt": [{"method": ...}]}` when the directory is yours (a PEFT adapter for the peft
    plugin), else None. Lets `tune merge` and `tune chat` open artifacts of other tools.
    """


@hookspec(firstresult=True)
def tune_load_for_inference(
    name: str, settings: BaseModel, dtype: str, ctx: RunContext
) -> tuple[Any, Any]:
    """Return `(model, tokenizer)`: the base model, unquantized, in `dtype`, for merge and chat.

    `dtype` is "bfloat16", "float16" or "float32". On the loader's plugin. Optional: the default
    calls `tune_load_model` with quantization and checkpointing off and the loader's `dtype`
    setting (when it has one) set to `dtype`.
    """


@hookspec(firstresult=True)
def tune_merge_adapter(
    name: str, settings: BaseModel, model: Any, adapter_dir: str, ctx: RunContext
) -> Any:
    """Return `model` with the trained `[[adapt]] method = name` weights from `adapter_dir`.

    For `tune merge` and `tune chat`: the core loads the base (`tune_load_for_inference`), then
    calls this for each adapt step in recipe order. Merge into the base weights where the method
    allows it; a method that changes the forward (beacon) attaches itself with its trained
    weights. Optional: without it, merge and chat refuse such a run with a clear message.
    """


@hookspec(firstresult=True)
def tune_export(name: str, settings: BaseModel, model_dir: Any, out: Any, ctx: RunContext) -> Any:
    """Write the model in the format `tune export --format name`; return the paths written.

    Once per export, on the plugin that declared exporter `name` (also for `tune push --gguf`).
    `model_dir` is a plain transformers model folder the core prepared: the run's adapters merged
    into its base in 16 bits (as `tune merge` does, also for adapters trained on a 4-bit base),
    or a full fine-tune's final/ as trained. It holds config.json, safetensors weights,
    generation_config.json (its eos ids) and the trained tokenizer (tokenizer.json, the chat
    template). An adapter that adds modules the base architecture lacks (beacon) is refused by
    the core before this is called. `out` is the path the user gave with `--out` (a file or a
    folder, as the format documents); `settings` is the exporter's settings model, validated
    from `--quant` (key `quant`) and `-x key=value`. `ctx.recipe` is the run's recipe (base
    model, data, [[adapt]] chain, max_seq_len). Write atomically (a temporary name, then rename).
    """
