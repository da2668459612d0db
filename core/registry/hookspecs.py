"""THE contract between the core and every plugin (plugin API 2.0), in the order a run meets it.

    discover   tune_provide             each plugin declares its backends (historic)
               tune_plugin_status       broadcast: can this plugin work on this machine?
    validate   tune_check_recipe        broadcast: a cross-cutting rule the declarations cannot say
    set up     tune_choose_strategy     [strategy]      -> Strategy
    load       tune_load_model          [model] loader  -> (model, tokenizer) or Loaded
    adapt      tune_adapt_model         [[adapt]] step  -> the adapted model
    data       tune_format_data         [data] format   -> DataFormat
    optimize   tune_build_optimizer     [optimizer]     -> a torch optimizer
    save       tune_save_extras         broadcast: files beside final/ and merged models
    eval       tune_evaluate            [eval] metrics  -> {key: value}
    after      tune_merge_adapter       [[adapt]] step, optional: apply trained weights to a base

Each of the six design kinds (strategy, loader, adapter, data_format, optimizer, metric) has
exactly one required hook, above. Every other kind of backend is an object the core builds from
the class its plugin declared (`provide.tracker("csv", CsvSettings, build=CsvTracker)`):
quantization, data_source, objective, tracker, exporter. What a backend can optionally do lives
on that object, or in its declaration (`capabilities=`, `estimate=`, `preload=`,
`recognizes=`), never in a hook of its own. `tune.registry.kinds` is the table.

Two calling styles:
- **Backend hooks** take `name` and `settings` first. The core calls them on exactly one plugin,
  the one that declared the backend the recipe names (`firstresult` then only means "that
  plugin's answer"); `tune_evaluate` is called on each plugin serving a requested metric.
- **Broadcast hooks** (`tune_plugin_status`, `tune_check_recipe`, `tune_save_extras`) are
  called on every plugin; each checks whether the call concerns it.

An implementation may accept fewer arguments than its spec. Arguments are only ever added.
This module imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pydantic import BaseModel
    from tune.contract.context import RunContext
    from tune.contract.loading import Load
    from tune.recipe import Recipe
    from tune.registry.declare import Provide

PROJECT = "tune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- discover ------------------------------------------------------------------------------------
@hookspec(historic=True)
def tune_provide(provide: Provide) -> None:
    """Declare the named backends this plugin serves. Once per plugin, when it is registered.

    Call `provide.<kind>(name, SettingsModel, doc=..., ...)` for each backend: `loader`,
    `quantization`, `adapter`, `data_source`, `data_format`, `optimizer`, `objective`,
    `strategy`, `metric`, `tracker`, `exporter`. The settings model (a `tune.plugin.Settings`)
    validates the backend's recipe keys; unknown keys are rejected. Object kinds pass
    `build=Class` (called as `Class(settings, ctx)`). Every kind may pass `capabilities=`
    (what it supports, checked against the recipe before anything loads), `estimate=` (its
    terms of `tune estimate`) and `requires=` (modules it imports when used). Two plugins
    declaring one name in one scope is a start-up error. Historic: a plugin registered later is
    still asked.
    """


@hookspec
def tune_plugin_status() -> str | None:
    """One line for STATUS in `tune plugins list` when the plugin cannot work here, else None.

    Broadcast, at start-up. Must be cheap and import no torch (e.g. "needs a CUDA GPU"). A line
    that does not start with "ok" makes the plugin's backends unavailable: a recipe that uses
    one is refused at validation with that line.
    """


# -- validate --------------------------------------------------------------------------------------
@hookspec
def tune_check_recipe(recipe: Recipe) -> None:
    """Refuse a combination that the declared capabilities cannot express, before anything loads.

    Broadcast, after the recipe's backends are chosen, their settings validated and their
    capabilities checked (by `tune validate` and `tune run`). Raise `TuneError` saying why and
    what to change. Never compare other plugins' backend names here: declare a capability.
    """


# -- set up ----------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_choose_strategy(name: str, settings: BaseModel, ctx: RunContext) -> Any:
    """Return a `tune.plugin.Strategy` for `[strategy] name`. Once, before loading.

    The strategy owns process groups, device placement, model wrapping, backward/step, the
    accumulation boundary and its own checkpoint shards; the core's `ctx.collectives` reduces
    over its process group.
    """


# -- load ------------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_load_model(name: str, settings: BaseModel, ctx: RunContext, want: Load) -> Any:
    """Load what `want` (a `tune.plugin.Load`) asks for, for `[model] loader = name`.

    Returns `(model, tokenizer)`, or a `tune.plugin.Loaded` to add abilities (a fast generation
    mode). Three requests, all required of a loader:
    - training (the default): `want.quantization` is the quantization backend's config (pass
      it to the library) or None; build inside `ctx.strategy.load_model(...)` so a sharding
      strategy can have each rank read only its shard; honour gradient checkpointing;
    - `want.weights` False: the tokenizer only, model None (`tune data preview/stats`);
    - `want.training` False: for merge, chat and export: the base unquantized, in `want.dtype`.
    The tokenizer has a pad token. The model may be on CPU; the strategy places it.
    """


# -- adapt -----------------------------------------------------------------------------------------
@hookspec(firstresult=True)
def tune_adapt_model(name: str, settings: BaseModel, model: Any, ctx: RunContext) -> Any:
    """Return the adapted model for one `[[adapt]] method = name` step.

    Once per step, in recipe order, each on the previous step's result (a chain: beacon, then
    LoRA). Weights that must stay trainable whatever later steps freeze are marked with
    `tune.plugin.keep_trainable`.
    """


# -- data ------------------------------------------------------------------------------------------
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


# -- save ------------------------------------------------------------------------------------------
@hookspec
def tune_save_extras(model: Any, path: Any, ctx: RunContext) -> None:
    """Write what the plugin added to the model beside the final artifact. Main process only.

    Broadcast, after the strategy saved `final/` (into its temporary directory `path`), and by
    `tune merge` beside the merged model: e.g. the beacon's own weights, which a PEFT adapter or
    plain transformers would not keep. Everything written under `path` belongs to the run.
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


# -- after a run: merge, chat, export --------------------------------------------------------------
@hookspec(firstresult=True)
def tune_merge_adapter(
    name: str, settings: BaseModel, model: Any, adapter_dir: str, ctx: RunContext
) -> Any:
    """Return `model` with the trained `[[adapt]] method = name` weights from `adapter_dir`.

    For `tune merge`, `chat`, `eval` and `export`: the core loads the base (`tune_load_model`
    with `want.training` False), then calls this for each adapt step in recipe order. Merge
    into the base weights where the method allows it; a method that changes the forward (beacon)
    attaches itself with its trained weights and declares `mergeable=False`. Optional: without
    it, merge and chat refuse such a run with a clear message.
    """
