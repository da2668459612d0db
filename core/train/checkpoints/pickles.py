"""No pickle from a checkpoint reaches an unpickler that can run code.

Libraries read some checkpoint files with a full unpickler: DeepSpeed its model and optimizer
states (`torch.load(weights_only=False)`), torch.distributed.checkpoint its `.metadata`
(`pickle.load`). Before any of that, every pickle in the checkpoint is checked here: a torch
archive must need no global beyond torch's weights-only allow-list, a bare pickle must load
with torch's weights-only unpickler, in both cases plus the classes the run's strategy declares
its own files hold (`Strategy.checkpoint_globals`). Anything else is refused in one paragraph
naming the file and what it would import. Reading is cheap: archives are scanned, not loaded.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

from tune.errors import TuneError

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL = 0x80  # the first byte of a pickle of protocol 2 or later


def unsafe(path: Path, allowed: Iterable[type]) -> list[str]:
    """The globals a pickle or torch archive at `path` would import that are not allowed;
    [] when it is safe (or is not a pickle at all)."""
    import torch
    from torch import _weights_only_unpickler as weights_only

    with path.open("rb") as fh:
        head = fh.read(4)
    extra = list(allowed)
    if head == ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return []  # not a readable archive: its loader reports it as damaged
        with torch.serialization.safe_globals(extra):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    if head[:1] != bytes([PICKLE_PROTOCOL]):
        return []
    with torch.serialization.safe_globals(extra), path.open("rb") as fh:
        try:
            weights_only.load(fh, encoding="utf-8")
        except Exception as exc:  # UnpicklingError names the global it refused
            text = str(exc).strip().splitlines()
            return [text[0] if text else type(exc).__name__]
    return []


def check_checkpoint(folder: Path, allowed: Iterable[type] = ()) -> None:
    """Refuse the checkpoint in `folder` if any of its pickles needs more than `allowed` plus
    torch's weights-only allow-list."""
    allowed = list(allowed)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.suffix in (".json", ".toml", ".safetensors"):
            continue
        found = unsafe(path, allowed)
        if found:
            raise UnsafePickle(path, found)


class UnsafePickle(TuneError):
    """A checkpoint file whose pickle could run code when loaded."""

    def __init__(self, path: Path, found: list[str]):
        shown = "; ".join(found[:3])
        super().__init__(
            f"{path.name} holds a pickle that needs more than plain tensors and the classes "
            f"the strategy saves ({shown}): loading it could run code, so tune will not.",
            where=str(path),
            fix="resume only from checkpoints you or tune wrote; if this one is yours, it was "
            "changed after it was written: resume from an earlier one (--resume-from) or start "
            "a new run.",
        )
