"""Read rows from jsonl/json/csv/parquet files or a saved `datasets` directory, without torch.

Every row keeps where it came from (`file:line` or `file:row N`) so a bad row can be named.
JSON-lines files also stream from a byte offset, for exact resume. Public as
`tune.plugin.files`: data sources read, resolve and fingerprint files with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tune.errors import TuneError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def iter_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield `(where, row)` for each row of a supported file or a saved datasets directory."""
    regular_file(path, str(path))
    if path.is_dir():
        yield from _saved_dataset(path)
        return
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl(path)
    elif suffix == ".json":
        yield from _json(path)
    elif suffix == ".csv":
        yield from _arrow(path, "csv")
    elif suffix == ".parquet":
        yield from _arrow(path, "parquet")
    else:
        raise TuneError(
            f"unsupported data file type '{suffix or '(none)'}'.",
            where=str(path),
            fix=f"use one of {', '.join(SUFFIXES)}, or a directory written by "
            "datasets' save_to_disk.",
        )


def bad_utf8(exc: UnicodeDecodeError, where: str, at: int = 0) -> TuneError:
    """Invalid bytes said as the file position (`at`: the byte offset of the decoded text)."""
    bad = exc.object[exc.start : exc.start + 4]
    return TuneError(
        f"invalid UTF-8 at byte offset {at + exc.start} (bytes {bad!r}).",
        where=where,
        fix="data files must be UTF-8: re-encode the file (e.g. iconv -f latin1 -t utf-8) or "
        "remove the damaged text there.",
    )


def parse_json_line(line: str | bytes, where: str, at: int = 0) -> dict[str, Any]:
    """One JSON-lines row, or a TuneError naming where it is (`at`: the line's byte offset)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8-sig" if at == 0 else "utf-8")
        except UnicodeDecodeError as exc:
            raise bad_utf8(exc, where, at) from None
    row = _loads(line, where, "each line of a .jsonl file must be one complete JSON object.")
    if not isinstance(row, dict):
        raise TuneError(
            f"expected a JSON object, got {type(row).__name__}.",
            where=where,
            fix='each line must look like {"field": ...}.',
        )
    if "\\u" in line:
        check_text(row, where)
    return row


def _loads(text: str, where: str, fix: str) -> Any:
    """json.loads, every way it can fail said in one paragraph."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TuneError(
            f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno}).",
            where=where,
            fix=fix,
        ) from None
    except RecursionError:
        raise TuneError(
            "the JSON is nested too deeply to be a data row.",
            where=where,
            fix="a row holds fields, lists of messages and their parts; remove this row.",
        ) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise TuneError(
            f"unreadable JSON value ({str(exc).splitlines()[0]}).",
            where=where,
            fix="remove or fix this row.",
        ) from None


def check_text(value: Any, where: str) -> None:
    """Refuse text that has no UTF-8 form (an unpaired UTF-16 surrogate such as "\\ud800",
    which JSON can spell but no tokenizer can read). Walked without recursion."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                code = ord(item[exc.start])
                raise TuneError(
                    f"the row holds an unpaired surrogate \\u{code:04x}, which is not text "
                    "(a JSON escape of half a UTF-16 pair).",
                    where=where,
                    fix="fix the text (it was likely cut in the middle of an emoji), or remove "
                    "the row.",
                ) from None
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def regular_file(path: Path, where: str) -> None:
    """A data file is a regular file (a link to one is fine): not a device, pipe or socket."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise TuneError(
            f"'{path}' is not a regular file (a device, pipe or socket"
            + (f", linked to {path.resolve()}" if path.is_symlink() else "")
            + ").",
            where=where,
            fix="point the data at a file on disk.",
        )


def _jsonl(path: Path):
    at = 0
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                where = f"{path}:{lineno}"
                yield where, parse_json_line(line, where, at)
            at += len(line)


def _json(path: Path):
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise bad_utf8(exc, f"{path}:{line}") from None
    data = _loads(
        text, str(path), "fix the JSON syntax there; a .json data file holds one list of objects."
    )
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise TuneError(
            f"expected a list of objects, got {type(data).__name__}.",
            where=str(path),
            fix="a .json data file holds one list of objects; for one object per line use .jsonl.",
        )
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise TuneError(
                f"item {i} is {type(row).__name__}, not an object.", where=f"{path}: item {i}"
            )
        if "\\u" in text:
            check_text(row, f"{path}: item {i}")
        yield f"{path}: item {i}", row


def _arrow(path: Path, kind: str):
    try:
        if kind == "csv":
            from pyarrow import csv

            table = csv.read_csv(path)
        else:
            from pyarrow import parquet

            table = parquet.read_table(path)
    except Exception as exc:  # pyarrow raises several types for malformed files
        raise TuneError(
            f"cannot read {kind}: {str(exc).strip().splitlines()[0]}.",
            where=str(path),
            fix=f"check that the file is valid {kind}.",
        ) from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}: row {i + 2 if kind == 'csv' else i}", row


def _saved_dataset(path: Path):
    if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        raise TuneError(
            "this directory is not a saved datasets directory (no dataset_info.json).",
            where=str(path),
            fix="point at a file, or at a directory written by Dataset.save_to_disk.",
        )
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise TuneError(
                f"saved DatasetDict has splits {list(ds)} but no 'train'.",
                where=str(path),
                fix="save the split you want as its own directory.",
            )
        ds = ds["train"]
    for i, row in enumerate(ds):
        yield f"{path}: row {i}", row


def stream_jsonl(
    paths: list[Path], start: dict[str, Any] | None
) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    """`(position, where, row)` for each row from `start` ({"file", "offset"}) to the end."""
    first, offset = (start["file"], start["offset"]) if start else (0, 0)
    for index in range(first, len(paths)):
        path = paths[index]
        with path.open("rb") as fh:
            fh.seek(offset if index == first else 0)
            while line := fh.readline():
                at = fh.tell() - len(line)
                if not line.strip():
                    continue
                where = f"{path}: byte {at}"
                yield {"file": index, "offset": at}, where, parse_json_line(line, where, at)


def resolve_input(path_text: str, recipe_path: Path, where: str) -> Path:
    """Input paths resolve against the recipe's folder first, then the working directory."""
    candidate = Path(path_text).expanduser()
    if candidate.is_absolute():
        tried = [candidate]
    else:
        tried = [recipe_path.parent / candidate, Path.cwd() / candidate]
    for option in tried:
        if option.exists():
            regular_file(option, where)
            return option
    looked = ", ".join(str(t) for t in dict.fromkeys(tried))
    raise TuneError(
        f"file not found: '{path_text}' (looked in {looked}).",
        where=where,
        fix="check the path; relative paths are read from the recipe's folder, then from the "
        "current directory.",
    )


def cache_root() -> Path:
    return Path(os.environ.get("TUNE_CACHE", Path.home() / ".cache" / "tune"))


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of every file under a directory (names and bytes)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_once(target: Path, write: Callable[[Path], None], marker: str = "config.json") -> Path:
    """`target`, written once by `write(folder)` into a temporary folder beside it, then renamed
    into place: several ranks (or test workers) may ask at once; one writes, the others wait on
    a lock and find it done. Complete when it holds `marker`. For caches of generated files
    (e.g. a tiny model built from a config)."""
    import fcntl
    import shutil
    import tempfile

    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / marker).exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
