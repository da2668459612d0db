"""On-disk cache of tokenized examples, keyed by everything that could change them.

The key covers the data files' content (not their names or times), the tokenizer (vocabulary,
special tokens, chat template), the format and its settings, max_seq_len and the eval split, so
a second run with the same inputs skips tokenization and any change misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tune.data.files import cache_root, file_digest  # noqa: F401  (re-exported)

CACHE_VERSION = 3  # 3: tool calls, end-of-turn eos, row bound


def tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [
        backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items())),
        str(getattr(tokenizer, "chat_template", "")),
        json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
        str(getattr(tokenizer, "bos_token_id", None)),
        str(getattr(tokenizer, "eos_token_id", None)),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def make_key(parts: dict[str, Any]) -> str:
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _dir(key: str) -> Path:
    return cache_root() / "data" / key


def load(key: str) -> tuple[list, list, dict] | None:
    folder = _dir(key)
    if not (folder / "stats.json").exists():
        return None
    import pyarrow as pa

    def read(name: str) -> list[dict[str, list[int]]]:
        with pa.memory_map(str(folder / f"{name}.arrow")) as source:
            return pa.ipc.open_file(source).read_all().to_pylist()

    return read("train"), read("eval"), json.loads((folder / "stats.json").read_text())


def store(key: str, train: list, evals: list, stats: dict) -> None:
    """Write atomically; a failure to cache never fails the run.

    Any example layout is kept (the columns are those of the examples); integer lists are
    stored as int32, which every token id and label fits.
    """
    import pyarrow as pa

    folder = _dir(key)
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
        for name, rows in (("train", train), ("eval", evals)):
            table = _compact(pa.Table.from_pylist(rows))
            with (
                pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink,
                pa.ipc.new_file(sink, table.schema) as writer,
            ):
                writer.write_table(table)
        (tmp / "stats.json").write_text(json.dumps(stats))
        if folder.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        os.replace(tmp, folder)
    except OSError:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _compact(table):
    """int64 list columns as int32: half the disk, and token ids never need more."""
    import pyarrow as pa

    fields = [
        pa.field(f.name, pa.list_(pa.int32()))
        if pa.types.is_list(f.type) and pa.types.is_int64(f.type.value_type)
        else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))
