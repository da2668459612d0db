"""Pydantic validation errors said in recipe words: file, table, key, what was expected, fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from tune.errors import TuneError, did_you_mean

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


def first_error(exc: ValidationError) -> dict[str, Any]:
    """The problem to report: an unknown key first, since a misspelled key explains the
    'missing' error it causes (`[modle]` leaves `[model]` missing)."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def as_tune_error(
    exc: ValidationError,
    path: Path,
    model: type[BaseModel],
    *,
    table_label: str | None = None,
    also: set[str] = frozenset(),
    backend: Any = None,
) -> TuneError:
    """The first validation problem as one paragraph naming the file, table and key."""
    err = first_error(exc)
    loc = [str(p) for p in err["loc"]]
    kind = err["type"]
    key = loc[-1] if loc else "?"
    table = table_label or _table_of(loc[:-1])
    who = f" ({backend.kind} '{backend.name}' from plugin '{backend.plugin}')" if backend else ""
    if kind == "extra_forbidden":
        options = set(_fields_at(model, loc[:-1])) | set(also)
        if table == "the top level":
            return TuneError(
                f"unknown table [{key}].{did_you_mean(key, options)}",
                where=str(path),
                fix=f"rename or remove it; recipe tables are: {', '.join(sorted(options))}.",
            )
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
    if kind == "value_error":  # a rule across keys (a model validator): its own words
        msg = err["msg"].removeprefix("Value error, ")
        place = _table_of(loc) if loc or not table_label else table_label
        return TuneError(f"{place}: {msg}.", where=str(path), fix=f"change {place} as said.")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = re.findall(r"'([^']+)'", expected)
        return TuneError(
            f"{table} {key} = {got!r} is not allowed{who}; expected one of {expected}."
            f"{did_you_mean(got, choices)}",
            where=str(path),
            fix=f"set {key} to one of {expected}.",
        )
    if kind in _TYPE_WORDS:
        expected = _TYPE_WORDS[kind]
        return TuneError(
            f"{table} {key}: expected {expected}, got {got!r}{who}.",
            where=str(path),
            fix=f"set {key} to {expected}.",
        )
    rule = _constraint(kind, err)
    return TuneError(
        f"{table} {key} = {got!r} is not allowed{who}: it must be {rule}.",
        where=str(path),
        fix=f"set {key} to a value that is {rule}.",
    )


_CONSTRAINTS = {
    "greater_than": "greater than {gt}",
    "greater_than_equal": "at least {ge}",
    "less_than": "less than {lt}",
    "less_than_equal": "at most {le}",
    "multiple_of": "a multiple of {multiple_of}",
    "finite_number": "a finite number (not inf or nan)",
    "string_too_short": "at least {min_length} characters long",
    "string_too_long": "at most {max_length} characters long",
    "too_short": "at least {min_length} items long",
    "too_long": "at most {max_length} items long",
}


def _constraint(kind: str, err: dict[str, Any]) -> str:
    """A value rule in words ("at least 0"), from pydantic's error type and context; for other
    rules pydantic's own sentence, without its "Input should be" opening."""
    template = _CONSTRAINTS.get(kind)
    if template is not None:
        try:
            return template.format(**err.get("ctx", {}))
        except (KeyError, IndexError):
            pass
    msg = str(err["msg"])
    for opening in ("Input should be ", "Value should be ", "Input should "):
        if msg.startswith(opening):
            return msg[len(opening) :]
    return msg[:1].lower() + msg[1:]


def error_loc(exc: ValidationError) -> str:
    """The dotted location of the reported problem (to match it against `-o` overrides)."""
    return ".".join(str(p) for p in first_error(exc)["loc"])


def _table_of(loc: list[str]) -> str:
    if not loc:
        return "the top level"
    if loc[0] in ("adapt", "track") and len(loc) > 1 and loc[1].isdigit():
        return f"[[{loc[0]}]] #{int(loc[1]) + 1}"
    if loc[:2] == ["data", "mix"] and len(loc) > 2 and loc[2].isdigit():
        return f"[[data.mix]] #{int(loc[2]) + 1}"
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
