"""`Exporter`: the object an exporter backend declares (`build=`) for `tune export --format`.

The core prepares what every format starts from, a plain transformers model folder (adapters
merged in 16 bits, the trained tokenizer and chat template beside), then calls `write` with
temporary paths; it moves them into place, never over a file tune did not write. Imports no
torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Exporter:
    """Base class of exporters; `settings` come from `--quant` (key `quant`) and `-x key=value`;
    `ctx.recipe` is the run's recipe (base model, data, adapt chain, max_seq_len)."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        self.settings = settings
        self.ctx = ctx

    def targets(self, out: Path) -> list[Path]:
        """The files `write` will create for `--out out` (a file or a folder, as the format
        documents). Asked before anything loads, so nothing a user owns is overwritten.
        Default: `out` itself."""
        return [out]

    def write(self, model_dir: Path, files: list[Path]) -> None:
        """Write the model folder `model_dir` in this format: one file per target, in the same
        order, at the temporary paths `files` (each ends with its target's name; they share a
        folder, so relative references between them hold). The core moves them into place when
        all are written."""
        raise NotImplementedError
