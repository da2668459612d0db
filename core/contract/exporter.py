"""`Exporter`: the object an exporter backend declares (`build=`) for `tune export --format`.

The core prepares what every format starts from, a plain transformers model folder (adapters
merged in 16 bits, the trained tokenizer and chat template beside), then calls `write` with
temporary paths; it moves them into place, never over a file tune did not write. An exporter
may also `verify` what it wrote in the runtime that serves it (`tune export --verify`,
`tune verify FILE --against RUN`), against the trained model (tune.trained.verify.Reference).
Imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple


class Check(NamedTuple):
    """One line of a verification table. `ok` None: measured and shown, no pass/fail."""

    name: str
    ok: bool | None
    detail: str


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

    def reads(self, path: Path) -> bool:
        """Whether `path` is an artifact of this format (`tune verify PATH` asks each exporter
        which one it is). Default: no."""
        return False

    def verify(self, files: list[Path], reference: Any) -> list[Check] | None:
        """Load the written `files` (the targets, in order) in the runtime they are for and
        compare them with `reference` (the trained model in transformers, and prompts and texts
        of the run's own data; see tune.trained.verify.Reference). Returns the checks, as
        `Check`s or (name, ok, detail) tuples; a failed one makes the command exit non-zero.
        Default None: this format has no verification."""
        return None
