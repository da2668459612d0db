"""Streaming data: rows read lazily from JSONL files, tokenized and batched on the fly.

For data larger than memory. Each rank reads only its own rows (row i belongs to rank
i mod world size), so ranks never talk about data. Micro-batches are formed from consecutive
examples (packed next-fit when `pack = true`), which makes the position exact and tiny: the
file, the byte offset of the next row, and how many examples of that row were already used.
`--resume` seeks there. The stream wraps around at the end (one more epoch), so it never runs
dry: streaming runs are bounded by `[train] max_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.data.files import parse_json_line
from tune.errors import TuneError

Example = dict[str, list[int]]


@dataclass
class RowStream:
    """What a data format hands the core for streaming: files and how to encode one row."""

    files: list[Path]
    encode: Callable[[str, dict[str, Any]], tuple[list[Example], dict[str, int]]]


@dataclass
class Cursor:
    file: int = 0
    offset: int = 0  # byte offset of the next row to read
    row: int = 0  # index of that row across all files (for rank ownership)
    skip: int = 0  # examples of that row already used
    epoch: int = 0


@dataclass
class StreamReader:
    source: RowStream
    micro_batch_size: int
    max_seq_len: int
    pack: bool
    rank: int = 0
    world_size: int = 1
    cursor: Cursor = field(default_factory=Cursor)
    counts: dict[str, int] = field(
        default_factory=lambda: {"rows": 0, "truncated": 0, "dropped": 0, "windows": 0}
    )

    def __post_init__(self) -> None:
        self._pending: list[tuple[Cursor, Example]] = []  # examples read, not yet batched
        self._rows = self._examples()

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the next micro-batch starts: its first example's row and index in that row."""
        head = self._pending[0][0] if self._pending else self.cursor
        return dict(head.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = Cursor(**state)
        self._pending = []
        self._rows = self._examples()

    # -- reading ---------------------------------------------------------------------------
    def _examples(self) -> Iterator[tuple[Cursor, Example]]:
        """(position of the example, example) for this rank, forever (wrapping epochs)."""
        start = self.cursor
        while True:
            owned = 0
            row = start.row
            for file_index in range(start.file, len(self.source.files)):
                path = self.source.files[file_index]
                with path.open("rb") as fh:
                    fh.seek(start.offset if file_index == start.file else 0)
                    while line := fh.readline():
                        offset = fh.tell() - len(line)
                        if not line.strip():
                            continue
                        row += 1
                        if (row - 1) % self.world_size != self.rank:
                            continue
                        owned += 1
                        resuming = file_index == start.file and offset == start.offset
                        here = Cursor(
                            file_index, offset, row - 1, start.skip if resuming else 0, start.epoch
                        )
                        for i, example in enumerate(self._encode(path, line, here)):
                            if i >= here.skip:
                                yield Cursor(file_index, offset, row - 1, i, start.epoch), example
            if owned == 0 and start.file == 0 and start.offset == 0:
                raise TuneError(
                    "streaming found no rows for this process.",
                    where=", ".join(map(str, self.source.files)),
                    fix="check the data files, or use fewer processes than rows.",
                )
            start = Cursor(epoch=start.epoch + 1)

    def _encode(self, path: Path, line: bytes, here: Cursor) -> list[Example]:
        where = f"{path}: byte {here.offset}"
        examples, counts = self.source.encode(where, parse_json_line(line, where))
        if here.skip == 0:
            self.counts["rows"] += 1
            for key, value in counts.items():
                self.counts[key] = self.counts.get(key, 0) + value
        return examples

    # -- batching --------------------------------------------------------------------------
    def next_micro_batch(self) -> list:
        """micro_batch_size examples, or (packed) micro_batch_size rows of consecutive examples
        filled next-fit up to max_seq_len tokens each."""
        if not self._pending:
            self._pending.append(next(self._rows))
        if not self.pack:
            return [self._take() for _ in range(self.micro_batch_size)]
        rows = []
        for _ in range(self.micro_batch_size):
            row, used = [self._take()], 0
            used = len(row[0]["input_ids"])
            while used + len(self._pending[0][1]["input_ids"]) <= self.max_seq_len:
                used += len(self._pending[0][1]["input_ids"])
                row.append(self._take())
            rows.append(row)
        return rows

    def _take(self) -> Example:
        """The next example; one more is always read ahead (it is where the next batch starts)."""
        _, example = self._pending.pop(0)
        self._pending.append(next(self._rows))
        return example

    @property
    def epoch(self) -> int:
        return self.state_dict()["epoch"]
