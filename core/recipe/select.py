"""Choosing each backend a recipe names and validating its settings with the plugin's own model."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from tune.errors import TuneError, did_you_mean
from tune.recipe import Recipe, Selected
from tune.recipe.messages import as_tune_error
from tune.recipe.schema import CORE_KEYS

ALL_ROLES = (
    "strategy",
    "loader",
    "quantization",
    "adapt",
    "data_source",
    "data_format",
    "optimizer",
    "objective",
    "metrics",
    "track",
    "reward",
    "rollout",
)


def select_backends(recipe: Recipe, plugins: Any, roles: tuple[str, ...] = ALL_ROLES) -> None:
    """Pick each backend the recipe names and validate its settings with its own model.

    `roles` limits the choice (e.g. `tune merge` needs only the loader and the adapt chain, so
    a run trained with a metric plugin that is not installed here still merges).
    """
    path, raw, b = recipe.path, recipe.raw, recipe.backends
    loader = recipe.model.loader

    def pick(kind, name, table, core, where, scope_loader=None) -> Selected:
        backend = plugins.backend(kind, name, loader=scope_loader, where=str(path))
        module = backend.missing()
        if module:
            dist = plugins.infos[backend.plugin].distribution
            raise TuneError(
                f"{where} names {backend.kind} '{name}', which needs the module '{module}' "
                "that is not installed here.",
                where=str(path),
                fix=f"pip install {dist} (it brings {module}), or choose another {backend.kind}.",
            )
        extra = {k: v for k, v in table.items() if k not in core}
        try:
            settings = backend.settings.model_validate(extra)
        except ValidationError as exc:
            raise as_tune_error(
                exc, path, backend.settings, table_label=where, also=core, backend=backend
            ) from None
        return Selected(backend, settings)

    for role in ("strategy", "optimizer", "objective"):  # tables whose selector is `name`
        if role in roles:
            name = getattr(recipe, role).name
            b[role] = pick(role, name, raw.get(role, {}), CORE_KEYS[role], f"[{role}]")
    if "loader" in roles:
        b["loader"] = pick("loader", loader, raw["model"], CORE_KEYS["model"], "[model]")
    if recipe.model.quantization and not recipe.model.quantize:
        raise TuneError(
            "[model.quantization] is set but [model] quantize is not.",
            where=str(path),
            fix='add quantize = "nf4" (or int8, fp4) to [model], or remove the table.',
        )
    if "quantization" in roles and recipe.model.quantize:
        b["quantization"] = pick(
            "quantization",
            recipe.model.quantize,
            recipe.model.quantization,
            set(),
            "[model.quantization]",
            scope_loader=loader,
        )
    if "adapt" in roles:
        b["adapt"] = [
            pick(
                "adapter",
                step.method,
                raw["adapt"][i],
                CORE_KEYS["adapt"],
                f"[[adapt]] #{i + 1}",
                loader,
            )
            for i, step in enumerate(recipe.adapt)
        ]
    mixes = raw["data"].get("mix", [])
    if "data_source" in roles:
        specs = recipe.data.train_files + recipe.data.eval_files
        b["data_source"] = _pick_source(
            pick, plugins, recipe.data.source, raw["data"], specs, "[data.source]"
        )
        b["data_mix_source"] = [
            _pick_source(
                pick,
                plugins,
                src.source,
                mixes[i],
                src.train_files,
                f"[[data.mix]] #{i + 1} source",
            )
            for i, src in enumerate(recipe.data.mix)
        ]
    if "data_format" in roles:
        b["data_format"] = pick(
            "data_format", recipe.data.format, raw["data"], CORE_KEYS["data"], "[data]"
        )
        b["data_mix"] = [
            pick("data_format", src.format, mixes[i], CORE_KEYS["mix"], f"[[data.mix]] #{i + 1}")
            for i, src in enumerate(recipe.data.mix)
        ]
    if "metrics" in roles:
        b["metrics"] = _select_metrics(recipe, pick)
    if "track" in roles:
        b["track"] = [
            pick("tracker", entry.name, raw["track"][i], CORE_KEYS["track"], f"[[track]] #{i + 1}")
            for i, entry in enumerate(recipe.track)
        ]
    if "reward" in roles:
        b["reward"] = [
            pick(
                "reward", entry.name, raw["reward"][i], CORE_KEYS["reward"], f"[[reward]] #{i + 1}"
            )
            for i, entry in enumerate(recipe.reward)
        ]
    if "rollout" in roles and recipe.rollout is not None:
        # Only a named engine: without [rollout], an online objective picks its own default.
        b["rollout"] = pick(
            "rollout", recipe.rollout.name, raw["rollout"], CORE_KEYS["rollout"], "[rollout]"
        )
    if roles == ALL_ROLES:
        from tune.registry.compatibility import check_capabilities

        check_capabilities(recipe, plugins)
        plugins.hook.tune_check_recipe(recipe=recipe)


def _pick_source(pick, plugins, source, entry_raw: dict, specs: list[str], where: str) -> Selected:
    """The named source; with no name, the one declaring the specs' scheme (`hf://...`)."""
    table = entry_raw.get("source", {})
    table = {"name": table} if isinstance(table, str) else table
    name = source.name if "name" in table else _scheme_source(plugins, specs, where) or source.name
    return pick("data_source", name, table, CORE_KEYS["source"], where)


def _scheme_source(plugins, specs: list[str], where: str) -> str | None:
    """The data source that declared `schemes=` for the specs' `scheme://` addresses."""
    schemes = sorted({spec.split("://", 1)[0] for spec in specs if "://" in spec})
    if not schemes:
        return None
    readers = {s: b.name for b in plugins.declared("data_source") for s in b.schemes}
    unknown = [s for s in schemes if s not in readers]
    if unknown:
        known = ", ".join(f"{s}:// ({n})" for s, n in sorted(readers.items())) or "none"
        raise TuneError(
            f"no installed data source reads '{unknown[0]}://' addresses "
            f"(installed schemes: {known}).",
            where=where,
            fix="install the data-source plugin for that scheme (see `tune plugins list`), or "
            "name the source in [data.source] name and give plain specs.",
        )
    names = sorted({readers[s] for s in schemes})
    if len(names) > 1:
        raise TuneError(
            f"one entry mixes addresses read by different sources ({', '.join(names)}).",
            where=where,
            fix="give each source its own [[data.mix]] entry.",
        )
    return names[0]


def _select_metrics(recipe: Recipe, pick) -> dict[str, Selected]:
    """Each listed metric with the settings of its `[eval.<metric>]` table; stray tables rejected."""
    eval_raw = recipe.raw.get("eval", {})
    stray = set(eval_raw) - CORE_KEYS["eval"] - set(recipe.eval.metrics)
    if stray:
        key = sorted(stray)[0]
        options = CORE_KEYS["eval"] | set(recipe.eval.metrics)
        raise TuneError(
            f"unknown key '{key}' in [eval].{did_you_mean(key, options)}",
            where=str(recipe.path),
            fix=f"[eval] accepts {', '.join(sorted(CORE_KEYS['eval']))}, and one table per metric "
            "listed in metrics.",
        )
    metrics = {}
    for name in recipe.eval.metrics:
        table = eval_raw.get(name, {})
        table = table if isinstance(table, dict) else {}
        metrics[name] = pick("metric", name, table, set(), f"[eval.{name}]")
    return metrics
