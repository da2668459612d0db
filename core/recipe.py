"""Recipes: TOML in, a validated `Recipe` out, with `-o key=value` overrides.

Each backend table has one selector key (`loader`, `method`, `format`, `name`, `quantize`);
the core owns a few documented keys of the table and everything else belongs to the selected
backend, validated by the settings model its plugin declared. Unknown keys are errors with a
did-you-mean. Imports no torch.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tune.errors import TuneError, did_you_mean

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _Open(BaseModel):
    """A table whose extra keys belong to the selected backend."""

    model_config = ConfigDict(extra="allow")


class ModelSection(_Open):
    loader: str = "transformers"
    path: str = Field(description="hub id, local directory, or tune:tiny-llama/-qwen2/-mistral")
    quantize: str | None = None
    quantization: dict[str, Any] = Field(default_factory=dict)
    max_seq_len: int = Field(2048, gt=0)


class AdaptStep(_Open):
    method: str


class MixSource(_Open):
    """One more training source, in its own format; its other keys are that format's settings."""

    format: str
    train: str | list[str]

    @property
    def train_files(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)


class DataSection(_Open):
    format: str = "chat"
    train: str | list[str]
    mix: list[MixSource] = Field(
        default_factory=list,
        description="more training sources, each a [[data.mix]] table with its own format",
    )
    eval: str | list[str] | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    shuffle: bool = True
    pack: bool = Field(
        False,
        description="padding-free first-fit packing up to micro_batch_size x max_seq_len tokens",
    )
    group_by_length: bool = Field(
        False, description="padded batches of similar lengths (pack = false)"
    )
    cache: bool = Field(True, description="reuse tokenized examples from the on-disk cache")
    num_proc: int = Field(1, ge=1, description="processes for tokenization")
    streaming: bool = Field(False, description="read .jsonl lazily, tokenize and batch on the fly")

    @property
    def train_files(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)

    @property
    def eval_files(self) -> list[str]:
        if self.eval is None:
            return []
        return [self.eval] if isinstance(self.eval, str) else list(self.eval)


class OptimizerSection(_Open):
    name: str = "adamw"


class SchedulerSection(_Strict):
    name: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0)
    power: float = Field(1.0, gt=0, description="polynomial decay power")
    lr_end: float = Field(1e-7, ge=0, description="polynomial decay end value")


class StrategySection(_Open):
    name: str = "single"


class TrainSection(_Strict):
    output_dir: str = "runs/default"
    epochs: int = Field(1, ge=1)
    max_steps: int = Field(-1, description="stop after this many optimizer steps; -1 = epochs")
    micro_batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    precision: Precision = "auto"
    master_weights: Literal["fp32", "model"] = Field(
        "fp32",
        description="fp32: 16-bit trainable weights are updated in float32 (mixed precision); "
        "model: updated in the dtype they were loaded in (pure bf16, less memory)",
    )
    gradient_checkpointing: bool = False
    max_grad_norm: float = Field(1.0, ge=0.0, description="0 disables clipping")
    seed: int = 42
    log_every: int = Field(1, ge=1)
    save_every: int = Field(0, ge=0, description="checkpoint every N steps; 0 = only at the end")
    keep_last: int = Field(2, ge=1)
    eval_every: int = Field(0, ge=0, description="evaluate every N steps; 0 = only at the end")
    early_stopping_patience: int = Field(0, ge=0, description="evals without improvement; 0 = off")
    early_stopping_threshold: float = Field(0.0, ge=0.0)


class EvalSection(_Open):
    """`metrics` lists metric names; `[eval.<metric>]` tables hold each metric's settings."""

    metrics: list[str] = Field(default_factory=lambda: ["perplexity"])
    max_batches: int = Field(0, ge=0, description="0 = the whole eval set")
    batch_size: int = Field(0, ge=0, description="0 = train.micro_batch_size")


class GenerateSection(_Strict):
    prompts: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(48, ge=1)


class RecipeModel(_Strict):
    description: str = ""
    model: ModelSection
    adapt: list[AdaptStep] = Field(default_factory=list)
    data: DataSection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    generate: GenerateSection = Field(default_factory=GenerateSection)


# Keys the core owns in each open table; the rest goes to the selected backend.
CORE_KEYS: dict[str, set[str]] = {
    name: set(model.model_fields)
    for name, model in {
        "model": ModelSection,
        "adapt": AdaptStep,
        "data": DataSection,
        "optimizer": OptimizerSection,
        "strategy": StrategySection,
        "eval": EvalSection,
    }.items()
}

MIX_KEYS = set(MixSource.model_fields)


@dataclass
class Selected:
    """A backend chosen by the recipe with its validated settings."""

    backend: Any  # tune.plugins.Backend
    settings: BaseModel


@dataclass
class Recipe:
    """A validated recipe: core sections plus the chosen backends with their settings."""

    path: Path
    raw: dict[str, Any]
    model: ModelSection
    adapt: list[AdaptStep]
    data: DataSection
    optimizer: OptimizerSection
    scheduler: SchedulerSection
    strategy: StrategySection
    train: TrainSection
    eval: EvalSection
    generate: GenerateSection
    description: str = ""
    backends: dict[str, Any] = field(default_factory=dict)

    def selected(self, role: str) -> Selected:
        return self.backends[role]

    def resolved(self) -> dict[str, Any]:
        """The full recipe with every default filled in, as saved beside each checkpoint."""
        out: dict[str, Any] = {"description": self.description} if self.description else {}

        def merged(core: BaseModel, sel: Selected | None, drop=()) -> dict[str, Any]:
            data = {k: v for k, v in core.model_dump().items() if k not in drop}
            if sel is not None:
                data.update(sel.settings.model_dump(mode="json"))
            return data

        model = merged(self.model, self.backends.get("loader"), drop=("quantization",))
        if "quantization" in self.backends:
            model["quantization"] = self.backends["quantization"].settings.model_dump(mode="json")
        out["model"] = model
        if self.adapt:
            out["adapt"] = [
                merged(step, sel)
                for step, sel in zip(self.adapt, self.backends["adapt"], strict=True)
            ]
        out["data"] = merged(self.data, self.backends.get("data_format"), drop=("mix",))
        if self.data.mix:
            out["data"]["mix"] = [
                merged(src, sel)
                for src, sel in zip(self.data.mix, self.backends["data_mix"], strict=True)
            ]
        out["optimizer"] = merged(self.optimizer, self.backends.get("optimizer"))
        out["scheduler"] = self.scheduler.model_dump()
        out["strategy"] = merged(self.strategy, self.backends.get("strategy"))
        out["train"] = self.train.model_dump()
        ev = {k: v for k, v in self.eval.model_dump().items() if k in CORE_KEYS["eval"]}
        for name, sel in self.backends.get("metrics", {}).items():
            settings = sel.settings.model_dump(mode="json")
            if settings:
                ev[name] = settings
        out["eval"] = ev
        out["generate"] = self.generate.model_dump()
        return _drop_none(out)


# -- loading ------------------------------------------------------------------------------------
def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TuneError(
            "recipe file not found.",
            where=str(path),
            fix="check the path; `tune recipes list` shows the shipped recipes.",
        )
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TuneError(
            f"not valid TOML: {exc}.",
            where=str(path),
            fix="correct the syntax at that line (strings need quotes, tables need [brackets]).",
        ) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optimizer.lr=1e-4` -> (['optimizer', 'lr'], 1e-4): TOML value syntax, else a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
        raise TuneError(
            f"override '{text}' is not of the form key=value.",
            where="-o",
            fix="write it like -o optimizer.lr=1e-4 or -o adapt.0.r=8.",
        )
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise TuneError(
                        f"override '{text}': '{part}' is not an index of a list of {len(node)}.",
                        where="-o",
                        fix=f"use an index from 0 to {len(node) - 1}.",
                    )
                node = node[int(part)]
            else:
                if part not in node:
                    node[part] = [] if nxt.isdigit() else {}
                node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise TuneError(f"override '{text}': bad list index '{last}'.", where="-o")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise TuneError(
                f"override '{text}': '{'.'.join(parts[:-1])}' is not a table.", where="-o"
            )
    return raw


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
        raise _blame_override(_as_tune_error(exc, path, RecipeModel, raw), exc, overrides) from None
    recipe = Recipe(
        path=path,
        raw=raw,
        description=core.description or first_comment(path),
        model=core.model,
        adapt=core.adapt,
        data=core.data,
        optimizer=core.optimizer,
        scheduler=core.scheduler,
        strategy=core.strategy,
        train=core.train,
        eval=core.eval,
        generate=core.generate,
    )
    _check_core_rules(recipe)
    if plugins is not None:
        select_backends(recipe, plugins)
    return recipe


def _blame_override(
    error: TuneError, exc: ValidationError, overrides: list[str] | None
) -> TuneError:
    """Say so when the bad key came from `-o` rather than from the file."""
    loc = ".".join(str(p) for p in exc.errors()[0]["loc"])
    for text in overrides or []:
        if text.partition("=")[0].strip() == loc:
            error.where = f"{error.where} (set by -o {text})"
            error.args = (error.render(),)
    return error


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


ALL_ROLES = ("strategy", "loader", "quantization", "adapt", "data_format", "optimizer", "metrics")


def select_backends(recipe: Recipe, plugins: Any, roles: tuple[str, ...] = ALL_ROLES) -> None:
    """Pick each backend the recipe names and validate its settings with its own model.

    `roles` limits the choice (e.g. `tune merge` needs only the loader and the adapt chain, so
    a run trained with a metric plugin that is not installed here still merges).
    """
    path = recipe.path
    loader = recipe.model.loader

    def pick(kind, name, table, core, where, scope_loader=None):
        backend = plugins.backend(kind, name, loader=scope_loader, where=str(path))
        extra = {k: v for k, v in table.items() if k not in core}
        try:
            settings = backend.settings.model_validate(extra)
        except ValidationError as exc:
            raise _as_tune_error(
                exc, path, backend.settings, extra, table_label=where, also=core, backend=backend
            ) from None
        return Selected(backend, settings)

    raw = recipe.raw
    b = recipe.backends
    if "strategy" in roles:
        strategy_raw = raw.get("strategy", {})
        b["strategy"] = pick(
            "strategy", recipe.strategy.name, strategy_raw, CORE_KEYS["strategy"], "[strategy]"
        )
    if "loader" in roles:
        b["loader"] = pick("loader", loader, raw["model"], CORE_KEYS["model"], "[model]")
    if "quantization" in roles and recipe.model.quantize:
        b["quantization"] = pick(
            "quantization",
            recipe.model.quantize,
            recipe.model.quantization,
            set(),
            "[model.quantization]",
            scope_loader=loader,
        )
    elif recipe.model.quantization and not recipe.model.quantize:
        raise TuneError(
            "[model.quantization] is set but [model] quantize is not.",
            where=str(path),
            fix='add quantize = "nf4" (or int8, fp4) to [model], or remove the table.',
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
    if "data_format" in roles:
        b["data_format"] = pick(
            "data_format", recipe.data.format, raw["data"], CORE_KEYS["data"], "[data]"
        )
        b["data_mix"] = [
            pick(
                "data_format", src.format, raw["data"]["mix"][i], MIX_KEYS, f"[[data.mix]] #{i + 1}"
            )
            for i, src in enumerate(recipe.data.mix)
        ]
    if "optimizer" in roles:
        optimizer_raw = raw.get("optimizer", {})
        b["optimizer"] = pick(
            "optimizer", recipe.optimizer.name, optimizer_raw, CORE_KEYS["optimizer"], "[optimizer]"
        )
    if "metrics" in roles:
        b["metrics"] = _select_metrics(recipe, pick)
    if roles == ALL_ROLES:
        plugins.hook.tune_check_recipe(recipe=recipe)


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


def first_comment(path: Path) -> str:
    """A recipe's one-line description: its first comment line that is not a command."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    for line in lines:
        text = line.strip()
        if not text.startswith("#"):
            if text:
                break
            continue
        text = text.lstrip("#").strip()
        if text and not text.lower().startswith(("run:", "run with", "$", "tune ", "python ")):
            return text
    return ""


# -- errors -------------------------------------------------------------------------------------
_TYPE_WORDS = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string in quotes",
    "list_type": "a list like [1, 2]",
    "dict_type": "a table",
    "model_type": "a table",
}


def _as_tune_error(
    exc: ValidationError,
    path: Path,
    model: type[BaseModel],
    raw: Any,
    *,
    table_label: str | None = None,
    also: set[str] = frozenset(),
    backend: Any = None,
) -> TuneError:
    """The first validation problem, said in recipe words: file, table, key, expected, fix."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    kind = err["type"]
    key = loc[-1] if loc else "?"
    table = table_label or _table_of(loc[:-1])
    who = f" ({backend.kind} '{backend.name}' from plugin '{backend.plugin}')" if backend else ""
    if kind == "extra_forbidden":
        options = set(_fields_at(model, loc[:-1])) | set(also)
        return TuneError(
            f"unknown key '{key}' in {table}{who}.{did_you_mean(key, options)}",
            where=str(path),
            fix=f"remove it or use one of: {', '.join(sorted(options)) or '(no keys)'}.",
        )
    if kind == "missing":
        return TuneError(
            f"{table} needs the key '{key}'.",
            where=str(path),
            fix=f"add {key} = ... to {table}.",
        )
    got = err.get("input")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = re.findall(r"'([^']+)'", expected)
        return TuneError(
            f"{table} {key} = {got!r} is not allowed{who}; expected one of {expected}."
            f"{did_you_mean(got, choices)}",
            where=str(path),
            fix=f"set {key} to one of {expected}.",
        )
    expected = _TYPE_WORDS.get(kind, err["msg"].lower())
    return TuneError(
        f"{table} {key}: expected {expected}, got {got!r}{who}.",
        where=str(path),
        fix=f"set {key} to {expected}" + (f" ({err['msg']})." if kind not in _TYPE_WORDS else "."),
    )


def _table_of(loc: list[str]) -> str:
    if not loc:
        return "the top level"
    if loc[0] == "adapt" and len(loc) > 1 and loc[1].isdigit():
        return f"[[adapt]] #{int(loc[1]) + 1}"
    return "[" + ".".join(loc) + "]"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    current: Any = model
    for part in loc:
        if part.isdigit():
            continue
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return []
        ann = info.annotation
        args = getattr(ann, "__args__", ())
        current = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


# -- writing ------------------------------------------------------------------------------------
def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for resolved recipes (tables, arrays of tables, scalars, lists)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{_key(k)} = {scalar(x)}" for k, x in v.items()) + " }"
        return scalar(str(v))

    def table(prefix: str, body: dict[str, Any], header: str) -> None:
        plain = {k: v for k, v in body.items() if not _is_table(v) and not _is_table_list(v)}
        if header:
            lines.append("")
            lines.append(header)
        for k, v in plain.items():
            lines.append(f"{_key(k)} = {scalar(v)}")
        for k, v in body.items():
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            if _is_table(v):
                table(name, v, f"[{name}]")
            elif _is_table_list(v):
                for item in v:
                    table(name, item, f"[[{name}]]")

    table("", data, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else '"' + k + '"'


def resolve_input(path_text: str, recipe_path: Path, where: str) -> Path:
    """Input paths resolve against the recipe's folder first, then the working directory."""
    candidate = Path(path_text).expanduser()
    if candidate.is_absolute():
        tried = [candidate]
    else:
        tried = [recipe_path.parent / candidate, Path.cwd() / candidate]
    for option in tried:
        if option.exists():
            return option
    raise TuneError(
        f"file not found: '{path_text}' (looked in {', '.join(str(t) for t in dict.fromkeys(tried))}).",
        where=where,
        fix="check the path; relative paths are read from the recipe's folder, then from the "
        "current directory.",
    )
