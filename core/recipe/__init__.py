"""Recipes: TOML in, a validated `Recipe` out, with `-o key=value` overrides.

`schema` holds the core tables, `overrides` the `-o` syntax, `select` the choice of backends and
the validation of their settings, `messages` the translation of validation errors, `toml` the
reading and writing. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from tune.errors import TuneError
from tune.recipe.messages import as_tune_error, error_loc
from tune.recipe.overrides import apply_overrides, blame_override, parse_override
from tune.recipe.schema import (
    CORE_KEYS,
    AdaptStep,
    DataSection,
    EvalSection,
    GenerateSection,
    ModelSection,
    ObjectiveSection,
    OptimizerSection,
    RecipeModel,
    RewardEntry,
    RolloutSection,
    SchedulerSection,
    StrategySection,
    TrackEntry,
    TrainSection,
)
from tune.recipe.toml import dump_toml, first_comment, read_toml

__all__ = [
    "Recipe",
    "Selected",
    "dump_toml",
    "first_comment",
    "load_recipe",
    "parse_override",
    "recipe_from_dict",
    "select_backends",
]


@dataclass
class Selected:
    """A backend chosen by the recipe, with its validated settings."""

    backend: Any  # tune.registry.declare.Backend
    settings: BaseModel

    @property
    def capabilities(self) -> Any:
        """What this backend declared it supports, for these settings (`Capabilities`)."""
        return self.backend.capabilities_for(self.settings)

    def build(self, ctx: Any) -> Any:
        """The object of an object-kind backend (`build=`), for these settings: how an
        objective builds the recipe's rewards and rollout engine."""
        from tune.registry.calls import build_object

        return build_object(self, ctx)


@dataclass
class Recipe:
    """A validated recipe: the core tables plus the chosen backends with their settings.

    Plugins read it (through `ctx.recipe`) and never change it. `selected(role)` gives the
    chosen backend and settings of a role: strategy, loader, quantization, data_format,
    data_source, optimizer, objective, rollout (when the recipe has a `[rollout]` table); `backends["adapt"]`, `["data_mix"]`, `["data_mix_source"]`,
    `["track"]` and `["reward"]` are lists, `backends["metrics"]` a dict by name.
    """

    path: Path
    raw: dict[str, Any]
    model: ModelSection
    adapt: list[AdaptStep]
    data: DataSection
    optimizer: OptimizerSection
    scheduler: SchedulerSection
    objective: ObjectiveSection
    strategy: StrategySection
    train: TrainSection
    eval: EvalSection
    generate: GenerateSection
    track: list[TrackEntry] = field(default_factory=list)
    reward: list[RewardEntry] = field(default_factory=list)
    rollout: RolloutSection | None = None
    description: str = ""
    backends: dict[str, Any] = field(default_factory=dict)

    def selected(self, role: str) -> Selected:
        return self.backends[role]

    def resolved(self) -> dict[str, Any]:
        """The full recipe with every default filled in, as saved beside each checkpoint."""
        b = self.backends
        out: dict[str, Any] = {"description": self.description} if self.description else {}

        def merged(core: BaseModel, sel: Selected | None, drop=()) -> dict[str, Any]:
            data = {k: v for k, v in core.model_dump().items() if k not in drop}
            if sel is not None:
                data.update(sel.settings.model_dump(mode="json"))
            return data

        def pairs(cores, role):
            return zip(cores, b.get(role, [None] * len(cores)), strict=True)

        model = merged(self.model, b.get("loader"), drop=("quantization",))
        if "quantization" in b:
            model["quantization"] = b["quantization"].settings.model_dump(mode="json")
        out["model"] = model
        if self.adapt:
            out["adapt"] = [merged(step, sel) for step, sel in pairs(self.adapt, "adapt")]
        out["data"] = merged(self.data, b.get("data_format"), drop=("mix", "source"))
        out["data"]["source"] = merged(self.data.source, b.get("data_source"))
        if self.data.mix:
            out["data"]["mix"] = [
                {**merged(src, sel, drop=("source",)), "source": merged(src.source, source_sel)}
                for (src, sel), source_sel in zip(
                    pairs(self.data.mix, "data_mix"),
                    b.get("data_mix_source", [None] * len(self.data.mix)),
                    strict=True,
                )
            ]
        out["optimizer"] = merged(self.optimizer, b.get("optimizer"))
        out["scheduler"] = self.scheduler.model_dump()
        out["objective"] = merged(self.objective, b.get("objective"))
        out["strategy"] = merged(self.strategy, b.get("strategy"))
        out["train"] = self.train.model_dump()
        ev = {k: v for k, v in self.eval.model_dump().items() if k in CORE_KEYS["eval"]}
        for name, sel in b.get("metrics", {}).items():
            settings = sel.settings.model_dump(mode="json")
            if settings:
                ev[name] = settings
        out["eval"] = ev
        out["generate"] = self.generate.model_dump()
        if self.track:
            out["track"] = [merged(entry, sel) for entry, sel in pairs(self.track, "track")]
        if self.reward:
            out["reward"] = [merged(entry, sel) for entry, sel in pairs(self.reward, "reward")]
        if self.rollout is not None and "rollout" in b:
            out["rollout"] = merged(self.rollout, b["rollout"])
        return _drop_none(out)


def load_recipe(
    path: str | Path, overrides: list[str] | None = None, plugins: Any = None
) -> Recipe:
    """Read, override and validate a recipe; with `plugins`, also select and validate backends."""
    path = Path(path)
    raw = apply_overrides(read_toml(path), overrides or [])
    return recipe_from_dict(raw, path, overrides, plugins)


def recipe_from_dict(
    raw: dict[str, Any], path: Path, overrides: list[str] | None = None, plugins: Any = None
) -> Recipe:
    """Validate an already-read recipe table; `path` names it in messages."""
    try:
        core = RecipeModel.model_validate(raw)
    except ValidationError as exc:
        error = as_tune_error(exc, path, RecipeModel)
        raise blame_override(error, error_loc(exc), overrides) from None
    recipe = Recipe(
        path=path,
        raw=raw,
        description=core.description or first_comment(path),
        **{name: getattr(core, name) for name in RecipeModel.model_fields if name != "description"},
    )
    _check_core_rules(recipe)
    if plugins is not None:
        from tune.recipe.select import select_backends

        select_backends(recipe, plugins)
    return recipe


def select_backends(recipe: Recipe, plugins: Any, roles: tuple[str, ...] | None = None) -> None:
    """Choose the recipe's backends (see `tune.recipe.select`)."""
    from tune.recipe import select

    select.select_backends(recipe, plugins, roles or select.ALL_ROLES)


def _check_core_rules(recipe: Recipe) -> None:
    """Combinations of core keys that cannot work: (broken, what, where, fix), first one wins."""
    data = recipe.data
    rules = [
        (
            recipe.scheduler.warmup_steps and recipe.scheduler.warmup_ratio,
            "both warmup_steps and warmup_ratio are set.",
            "[scheduler]",
            "keep one of them.",
        ),
        (
            data.streaming and data.mix,
            "[[data.mix]] sources are read whole, which streaming avoids.",
            "[[data.mix]]",
            "set streaming = false, or merge the sources into one JSON-lines file.",
        ),
        (
            data.streaming and recipe.train.max_steps <= 0,
            "streaming data has no known length, so [train] max_steps must be set.",
            "[train] max_steps",
            "set max_steps = N (the stream wraps around as many times as needed).",
        ),
        (
            data.streaming and data.eval_fraction,
            "eval_fraction needs the whole dataset in memory, which streaming avoids.",
            "[data]",
            'give a separate eval file with eval = "..." instead.',
        ),
        (
            data.eval_files and data.eval_fraction,
            "both eval (a file) and eval_fraction are set.",
            "[data]",
            "use a separate eval file or a fraction of train, not both.",
        ),
    ]
    for broken, what, where, fix in rules:
        if broken:
            raise TuneError(what, where=f"{recipe.path}: {where}", fix=fix)


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
