"""`-o key=value` overrides: TOML value syntax, dotted keys, list indices. Imports no torch."""

from __future__ import annotations

import copy
import re
from typing import Any

from tune.errors import TuneError
from tune.recipe.toml import MAX_DEPTH, check_depth, tomllib


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
    parts = key.split(".")
    if len(parts) > MAX_DEPTH:
        raise TuneError(
            f"override key '{key[:60]}...' has {len(parts)} parts: no recipe key is that deep.",
            where="-o",
            fix="write the key as table.key (or table.0.key for a list of tables).",
        )
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    except RecursionError:
        parsed = None
    if parsed is None:
        raise TuneError(
            f"the value of override '{key}' is nested too deeply.",
            where="-o",
            fix="give a plain value, list or inline table.",
        )
    check_depth({"v": parsed}, "-o")
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `raw` with each override applied in order (missing tables are created)."""
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


def blame_override(error: TuneError, loc: str, overrides: list[str] | None) -> TuneError:
    """Say so when the bad key `loc` (dotted) came from `-o` rather than from the file."""
    for text in overrides or []:
        if text.partition("=")[0].strip() == loc:
            error.where = f"{error.where} (set by -o {text})"
            error.args = (error.render(),)
    return error
