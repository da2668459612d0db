"""`DataSource`: the object a data-source backend declares (`build=`): where rows come from.

A source turns the specs a recipe gives (`train = [...]`, `eval = ...`: file paths for the
built-in "files" source, dataset ids for a hub source) into rows. The core does everything
after that: formats, eval split, caching, parallel tokenization, packing, streaming and exact
resume. Sources run without torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tune.errors import TuneError

Row = dict[str, Any]


class DataSource:
    """Base class of data sources. Subclasses implement `check`, `rows` and `fingerprint`."""

    def __init__(self, settings: Any, ctx: Any):
        self.settings = settings
        self.ctx = ctx

    def check(self, specs: list[str], where: str) -> str:
        """Check the specs without reading everything (offline where possible); return a
        short description for `tune validate` ("2 files", "will download org/name").

        Raise `TuneError(where=where)` for a spec that cannot work.
        """
        raise NotImplementedError

    def downloads(self, specs: list[str], where: str) -> list[str]:
        """What reading the specs would download (one phrase each); empty when nothing.

        `tune validate` reads and checks every row only when this is empty, and otherwise
        prints it instead: validation never touches the network.
        """
        return []

    def rows(self, specs: list[str], where: str) -> Iterator[tuple[str, Row]]:
        """Every row of the specs, in order, as `(where the row is, row)`."""
        raise NotImplementedError

    def fingerprint(self, specs: list[str], where: str) -> str:
        """A string that changes whenever the rows could (content hash, revision): the key of
        the tokenization cache."""
        raise NotImplementedError

    def stream(
        self, specs: list[str], where: str, start: dict[str, Any] | None
    ) -> Iterator[tuple[dict[str, Any], str, Row]]:
        """Rows read lazily from `start` (None: the beginning) to the end, once, each as
        `(position, where, row)`. `stream(specs, where, position)` must begin again at exactly
        that row: positions are saved in checkpoints (JSON) for `--resume`.

        Optional: without it, `[data] streaming = true` is refused for this source.
        """
        raise TuneError(
            f"data source '{type(self).__name__}' cannot stream.",
            where=where,
            fix="set [data] streaming = false.",
        )
