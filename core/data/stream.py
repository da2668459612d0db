"""Streaming data: rows read lazily from the data source, tokenized and batched on the fly.

For data larger than memory. Each rank keeps only its own rows (row i belongs to rank
i mod world size), so ranks never talk about data. Micro-batches are formed from consecutive
examples (packed next-fit when `pack = true`), which makes the position exact and tiny: the
source's position of the next row, and how many examples of that row were already used.
`--resume` starts the source there. The stream wraps around at the end (one more epoch), so it
never runs dry: streaming runs are bounded by `[train] max_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tune.errors import TuneError

Example = dict[str, Any]


@dataclass
class RowStream:
    """What the pipeline hands the reader: how to read rows from a position, how to encode one.

    `rows(start)` yields `(position, where, row)` from `start` (None: the beginning) to the end
    of the data, once; `encode(where, row)` returns `(examples, counts)`.
    """

    rows: Callable[[dict[str, Any] | None], Iterator[tuple[dict[str, Any], str, dict]]]
    encode: Callable[[str, dict[str, Any]], tuple[list[Example], dict[str, int]]]
    where: str = "streaming data"
    length: Callable[[Example], int] = lambda example: len(example["input_ids"])


@dataclass
class Cursor:
    position: dict[str, Any] | None = None  # the source's position of the next row to read
    row: int = 0  # index of that row across the whole data (for rank ownership)
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
            for position, where, raw in self.source.rows(start.position):
                row += 1
                if (row - 1) % self.world_size != self.rank:
                    continue
                owned += 1
                skip = start.skip if position == start.position else 0
                examples = self._encode(where, raw, skip)
                for i, example in enumerate(examples):
                    if i >= skip:
                        yield Cursor(position, row - 1, i, start.epoch), example
            if owned == 0 and start.position is None:
                raise TuneError(
                    "streaming found no rows for this process.",
                    where=self.source.where,
                    fix="check the data files, or use fewer processes than rows.",
                )
            start = Cursor(epoch=start.epoch + 1)

    def _encode(self, where: str, raw: dict, skip: int) -> list[Example]:
        examples, counts = self.source.encode(where, raw)
        if skip == 0:
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
        length = self.source.length
        rows = []
        for _ in range(self.micro_batch_size):
            row = [self._take()]
            used = length(row[0])
            while used + length(self._pending[0][1]) <= self.max_seq_len:
                used += length(self._pending[0][1])
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
