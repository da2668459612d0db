"""TOML in and out: reading a recipe file, writing the resolved recipe. Imports no torch."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from tune.errors import TuneError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["dump_toml", "first_comment", "read_toml", "tomllib"]


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
