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


MAX_RECIPE_BYTES = 4 << 20  # a recipe is a page of settings; a bigger file is not one


def read_toml(path: Path) -> dict[str, Any]:
    """A recipe file as a table: UTF-8 (a byte-order mark is fine), valid TOML, sanely nested;
    anything else is one paragraph naming the file and what to do."""
    if not path.is_file():
        raise TuneError(
            "recipe file not found.",
            where=str(path),
            fix="check the path; `tune recipes list` shows the shipped recipes.",
        )
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise TuneError(
            f"the file is {path.stat().st_size:,} bytes: too large to be a recipe.",
            where=str(path),
            fix="point tune at the recipe's .toml file.",
        )
    return parse_toml(decode_text(path.read_bytes(), str(path)), str(path))


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); another encoding is named, not guessed."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TuneError(
            "the file is UTF-16, not UTF-8.",
            where=where,
            fix="save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8 FILE > NEW).",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 4]
        raise TuneError(
            f"the file is not UTF-8: invalid bytes {bad!r} at byte {exc.start} (Latin-1 or "
            "another legacy encoding?).",
            where=where,
            fix="save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > NEW).",
        ) from None


MAX_DEPTH = 32  # tables and lists nested deeper than this are no recipe


def parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TuneError(
            f"not valid TOML: {exc}.",
            where=where,
            fix="correct the syntax at that line (strings need quotes, tables need [brackets]).",
        ) from None
    except RecursionError:
        raise TuneError(
            "the TOML is nested too deeply to be a recipe.",
            where=where,
            fix="a recipe has tables a level or two deep; remove the deeply nested value.",
        ) from None
    check_depth(table, where)
    return table


def check_depth(value: Any, where: str) -> None:
    """Refuse values nested deeper than MAX_DEPTH (walked without recursion)."""
    todo = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise TuneError(
                f"the recipe nests tables or lists more than {MAX_DEPTH} levels deep.",
                where=where,
                fix="a recipe has tables a level or two deep; remove the deeply nested value.",
            )
        if isinstance(item, dict):
            todo += [(v, depth + 1) for v in item.values()]
        elif isinstance(item, list):
            todo += [(v, depth + 1) for v in item]


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
            return _string(v)
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
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _string(k)


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and every control character escaped, so any
    value a recipe held (a prompt with a tab or an escape code) reads back as it was."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate has no UTF-8 form: keep it visible
            out.append("\\ufffd")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
