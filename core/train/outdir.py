"""The output directory belongs to one run at a time, and tune only touches what it wrote.

- A lock file (`.tune.lock`, flock'ed by the main process for the whole run, with pid/host/start
  inside) refuses a second run at once; a lock left by a killed run is stale and taken over.
- A marker (`.tune-run.json`) lists the entries tune created there and the files it wrote into
  `final/`. `--overwrite` deletes only those; a file tune would write but did not (a user's
  `recipe.toml`, `final/thesis.txt`) is never overwritten or deleted: the run is refused, naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from tune.errors import TuneError

MARKER = ".tune-run.json"
LOCK = ".tune.lock"
# Everything tune itself writes at the top of an output directory.
TUNE_FILES = ("recipe.toml", "metrics.jsonl", "samples.jsonl", "summary.json", "loss.png")
TUNE_DIRS = ("checkpoints", "final", ".tmp-final")
CHECKPOINT_NAME = re.compile(r"^(\.tmp-)?step-\d+$")
RUN_RECORDS = ("final", "checkpoints", "metrics.jsonl")


class OutputDir:
    """One run's claim on its output directory (file operations on the main process only)."""

    def __init__(self, path: Path, where: str):
        self.path = path
        self.where = where
        self._lock_fd: int | None = None

    # -- what is there -------------------------------------------------------------------------
    def marker(self) -> dict[str, Any]:
        """The marker, or for a run from before markers existed, what such a run wrote."""
        try:
            return json.loads((self.path / MARKER).read_text(encoding="utf-8"))
        except FileNotFoundError:
            pass
        except (ValueError, UnicodeDecodeError):
            return {"entries": [], "final_files": []}
        if (self.path / "metrics.jsonl").exists() and (self.path / "recipe.toml").exists():
            final = self.path / "final"
            files = [str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()]
            present = [n for n in TUNE_FILES + TUNE_DIRS if (self.path / n).exists()]
            return {"entries": present, "final_files": files}
        return {"entries": [], "final_files": []}

    def has_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_RECORDS)

    def foreign(self) -> list[str]:
        """Files where tune would write that tune did not write (relative paths)."""
        mark = self.marker()
        owned = set(mark.get("entries", []))
        found = [n for n in TUNE_FILES + TUNE_DIRS if (self.path / n).exists() and n not in owned]
        final = self.path / "final"
        if "final" in owned and final.is_dir():
            mine = set(mark.get("final_files", []))
            found += [
                f"final/{p.relative_to(final)}"
                for p in sorted(final.rglob("*"))
                if p.is_file() and str(p.relative_to(final)) not in mine
            ]
        ckpts = self.path / "checkpoints"
        if "checkpoints" in owned and ckpts.is_dir():
            found += [
                f"checkpoints/{p.name}"
                for p in sorted(ckpts.iterdir())
                if not CHECKPOINT_NAME.match(p.name)
            ]
        return found

    # -- claiming ------------------------------------------------------------------------------
    def claim(self, *, resume: bool, overwrite: bool, has_checkpoint: bool) -> None:
        """Lock, refuse what would lose work, clear the previous run for --overwrite."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        try:
            self._check(resume=resume, overwrite=overwrite, has_checkpoint=has_checkpoint)
        except BaseException:
            self.release()
            raise
        mark = self.marker() if resume else {"entries": [], "final_files": []}
        pre_existing = {n for n in TUNE_FILES + TUNE_DIRS if (self.path / n).exists()}
        entries = set(mark.get("entries", [])) | (set(TUNE_FILES + TUNE_DIRS) - pre_existing)
        self.write_marker(sorted(entries), mark.get("final_files", []))

    def _check(self, *, resume: bool, overwrite: bool, has_checkpoint: bool) -> None:
        foreign = self.foreign()
        if foreign:
            shown = ", ".join(foreign[:8]) + (
                f" and {len(foreign) - 8} more" if foreign[8:] else ""
            )
            raise TuneError(
                f"output_dir '{self.path}' holds files tune did not write and would overwrite "
                f"or delete: {shown}.",
                where=self.where,
                fix="move them elsewhere, or choose another directory with "
                "-o train.output_dir=...; tune never deletes files it did not write.",
            )
        if resume or not self.has_run():
            return
        if not overwrite:
            unfinished = not (self.path / "final").exists() and not has_checkpoint
            detail = (
                " It stopped before its first checkpoint, so --resume starts it again from step 0."
                if unfinished
                else ""
            )
            raise TuneError(
                f"output_dir '{self.path}' already holds a run "
                f"({', '.join(n for n in RUN_RECORDS if (self.path / n).exists())}).{detail}",
                where=self.where,
                fix="continue it with --resume, pick another directory with "
                "-o train.output_dir=..., or replace it with --overwrite.",
            )
        self.remove_owned()

    def remove_owned(self) -> None:
        """--overwrite: delete what the previous run wrote, and nothing else."""
        mark = self.marker()
        for name in mark.get("entries", []):
            target = self.path / name
            if name == "final" and target.is_dir():
                for rel in mark.get("final_files", []):
                    (target / rel).unlink(missing_ok=True)
                _remove_empty_dirs(target)
            elif name == "checkpoints" and target.is_dir():
                for child in target.iterdir():
                    if CHECKPOINT_NAME.match(child.name):
                        shutil.rmtree(child, ignore_errors=True)
                _remove_empty_dirs(target)
            elif target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()

    def write_marker(self, entries: list[str], final_files: list[str]) -> None:
        body = {"owner": "tune", "entries": entries, "final_files": final_files}
        tmp = self.path / (MARKER + ".tmp")
        tmp.write_text(json.dumps(body, indent=1), encoding="utf-8")
        os.replace(tmp, self.path / MARKER)

    def record_final(self) -> None:
        """After final/ was written: remember its files as tune's."""
        final = self.path / "final"
        files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
        self.write_marker(self.marker().get("entries", []), files)

    def clear_final(self) -> None:
        """Make room for a new final/: remove tune's files there (claim() refused any other)."""
        final = self.path / "final"
        if not final.exists():
            return
        for rel in self.marker().get("final_files", []):
            (final / rel).unlink(missing_ok=True)
        _remove_empty_dirs(final)
        if final.exists():
            left = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
            raise TuneError(
                f"'{final}' holds files tune did not write ({', '.join(left[:8])}), so the new "
                "final model cannot replace it.",
                where=self.where,
                fix=f"move them out of {final}; the trained model is in the last checkpoint, "
                "resume with --resume to write final/ again.",
            )

    # -- the lock ------------------------------------------------------------------------------
    def lock(self) -> None:
        import fcntl

        path = self.path / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_lock(fd)
            os.close(fd)
            raise TuneError(
                f"output_dir '{self.path}' is in use by another tune run "
                f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                f"{holder.get('started', '?')}).",
                where=self.where,
                fix="wait for that run to end, or use another directory with "
                "-o train.output_dir=....",
            ) from None
        except OSError:  # no flock on this filesystem: fall back to the pid/host in the file
            holder = _read_lock(fd)
            if _alive_here(holder):
                os.close(fd)
                raise TuneError(
                    f"output_dir '{self.path}' is in use by another tune run "
                    f"(pid {holder['pid']} on {holder['host']}).",
                    where=self.where,
                    fix="wait for that run to end, or use another -o train.output_dir=....",
                ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.ctime()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is None:
            return
        try:
            (self.path / LOCK).unlink(missing_ok=True)
        finally:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None


def _read_lock(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _alive_here(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname() or not holder.get("pid"):
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return int(holder["pid"]) != os.getpid()


def _remove_empty_dirs(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
