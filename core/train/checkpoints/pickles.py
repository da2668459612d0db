"""No pickle from a checkpoint reaches an unpickler that can run code.

Libraries read some checkpoint files with a full unpickler: DeepSpeed its model and optimizer
states (`torch.load(weights_only=False)`), torch.distributed.checkpoint its `.metadata`
(`pickle.load`) and the non-tensor items of its `.distcp` files (`torch.load(weights_only=
False)`). Before any of that, every pickle in the checkpoint is read here, without running it:
the globals it would import are collected from its opcodes (any protocol) and each must be on
torch's weights-only allow-list or among the classes the run's strategy declares its own files
hold (`Strategy.checkpoint_globals`). A pickle is found as a bare file, or as the `data.pkl` of
every zip archive in a file (a torch.save file is one; a DCP `.distcp` file joins many). Only
the pickles are read, never the tensor data, so a check costs little even for a large model.
"""

from __future__ import annotations

import io
import mmap
import pickletools
import struct
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tune.errors import TuneError

ZIP_MAGIC = b"PK\x03\x04"
END_OF_ARCHIVE = b"PK\x05\x06"  # a zip archive's end-of-central-directory record
ZIP64_LOCATOR, ZIP64_RECORD = 20, 56  # the zip64 records that may sit just before it
PICKLE_PROTOCOL = 0x80  # the first byte of a pickle of protocol 2 or later
# Opcodes that import by name: GLOBAL and INST carry "module name" as their argument.
NAMED = {"GLOBAL", "INST"}
# Opcodes that can import or call something no allow-list can judge: refused outright.
OPAQUE = {"EXT1", "EXT2", "EXT4"}


def allowed_names(extra: Iterable[type] = ()) -> set[str]:
    """torch's weights-only allow-list plus the given classes, as "module.qualname"."""
    from torch import _weights_only_unpickler as weights_only

    names = set(weights_only._get_allowed_globals())
    names |= set(weights_only._get_user_allowed_globals())
    names |= {f"{c.__module__}.{c.__qualname__}" for c in extra}
    return names


def globals_in(pickle_bytes: bytes) -> set[str]:
    """Every global the pickle would import ("module.name"), read from its opcodes without
    running it; EXT opcodes (the copyreg extension registry) are reported as such."""
    found: set[str] = set()
    strings: list[Any] = []  # the values pushed, for STACK_GLOBAL's two strings
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(io.BytesIO(pickle_bytes)):
        name = op.name
        if name in NAMED:
            module, _, attr = str(arg).partition(" ")
            found.add(f"{module}.{attr}")
        elif name == "STACK_GLOBAL":
            module, attr = (strings[-2], strings[-1]) if len(strings) >= 2 else ("?", "?")
            found.add(f"{module}.{attr}")
        elif name in OPAQUE:
            found.add(f"<extension code {arg}>")
        if isinstance(arg, str) and name.endswith(("UNICODE", "STRING")):
            strings.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = strings[-1] if strings else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            strings.append(memo.get(arg))
        elif name not in ("FRAME", "PROTO"):
            strings.append(None)  # something else is on the stack now
    return found


class _Window(io.RawIOBase):
    """A read-only view of bytes [start, end) of a memory map, for zipfile."""

    def __init__(self, data: mmap.mmap, start: int, end: int):
        self.data, self.start, self.end, self.pos = data, start, end, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.end - self.start}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        begin = self.start + self.pos
        stop = min(self.end, begin + len(buffer))
        if begin >= stop:
            return 0
        chunk = self.data[begin:stop]
        buffer[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


def _archives(data: mmap.mmap) -> Iterator[zipfile.ZipFile]:
    """Every zip archive in the file, found from its end-of-central-directory record (a record
    in tensor bytes by chance does not open as an archive and is skipped)."""
    at = data.find(END_OF_ARCHIVE)
    while at != -1:
        if at + 22 <= len(data):
            size, offset, comment = struct.unpack("<IIH", data[at + 12 : at + 22])
            start, end = at - size - offset, at + 22 + comment
            record = at - ZIP64_LOCATOR - ZIP64_RECORD  # torch writes zip64 records too
            if record >= 0 and data[at - ZIP64_LOCATOR : at - 16] == b"PK\x06\x07":
                (relative,) = struct.unpack("<Q", data[at - 12 : at - 4])
                if data[record : record + 4] == b"PK\x06\x06":
                    start = record - relative
            archive = _open(data, start, end) if start >= 0 and end <= len(data) else None
            if archive is not None:
                yield archive
        at = data.find(END_OF_ARCHIVE, at + 4)


def _open(data: mmap.mmap, start: int, end: int) -> zipfile.ZipFile | None:
    try:
        return zipfile.ZipFile(io.BufferedReader(_Window(data, start, end)))
    except (zipfile.BadZipFile, OSError, ValueError, struct.error):
        return None


def unsafe(path: Path, allowed: set[str]) -> list[str]:
    """The globals the pickles in the file at `path` would import that are not `allowed`;
    [] when it holds none (or no pickle at all)."""
    if path.stat().st_size == 0:
        return []
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pickles: list[bytes] = []
        if data[:1] == bytes([PICKLE_PROTOCOL]):
            pickles.append(bytes(data))
        for archive in _archives(data):
            pickles += [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    bad: set[str] = set()
    for blob in pickles:
        try:
            bad |= globals_in(blob) - allowed
        except Exception as exc:  # not a readable pickle: its loader reports it as damaged
            if not isinstance(exc, ValueError | EOFError | IndexError | KeyError):
                raise
    return sorted(bad)


def check_checkpoint(folder: Path, allowed: Iterable[type] = ()) -> None:
    """Refuse the checkpoint in `folder` if any of its pickles needs more than torch's
    weights-only allow-list plus `allowed`."""
    names = allowed_names(allowed)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.suffix in (".json", ".toml", ".safetensors"):
            continue
        found = unsafe(path, names)
        if found:
            raise UnsafePickle(path, found)


class UnsafePickle(TuneError):
    """A checkpoint file whose pickle could run code when loaded."""

    def __init__(self, path: Path, found: list[str]):
        shown = "; ".join(found[:3])
        super().__init__(
            f"{path.name} holds a pickle that imports more than plain tensors and the classes "
            f"the strategy saves ({shown}): loading it could run code, so tune will not.",
            where=str(path),
            fix="resume only from checkpoints you or tune wrote; if this one is yours, it was "
            "changed after it was written: resume from an earlier one (--resume-from) or start "
            "a new run.",
        )
