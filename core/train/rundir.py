"""The output directory belongs to one run at a time, and tune only touches what it wrote.

- A lock file (`.tune.lock`, flock'ed by the main process for the whole run, with pid/host/start
  inside) refuses a second run at once; a lock left by a killed run is stale and taken over.
  The lock file is never deleted: deleting it while another process waits on it would let two
  runs hold "the" lock at once.
- A marker (`.tune-run.json`) lists what this run wrote there, recorded as it is written
  (`claim`): top-level names (relative, one component, no links) and the files of `final/`.
  Checkpoints list their own files in their manifests. `--overwrite` deletes only what is
  listed, after checking that no folder it would delete holds a file tune did not write; a
  file tune would write but did not (a user's `recipe.toml`, `final/thesis.txt`) is never
  overwritten or deleted: the run is refused, naming it. Nothing a marker says is trusted:
  a name that is absolute, has '..', or is a link is ignored or refused, never followed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from tune.errors import TuneError
from tune.train.checkpoints import manifest
from tune.train.checkpoints.atomic import inside, remove, write_text
from tune.train.checkpoints.save import STEP_DIR

MARKER = ".tune-run.json"
LOCK = ".tune.lock"
# What tune itself may write at the top of an output directory (plugins claim their own).
TUNE_FILES = ("recipe.toml", "metrics.jsonl", "samples.jsonl", "summary.json", "loss.png")
TUNE_DIRS = ("checkpoints", "final")
RUN_RECORDS = ("final", "checkpoints", "metrics.jsonl")
TEMPORARY = (".tmp-final", ".tmp-", ".old-")


def valid_name(name: Any) -> bool:
    """A name the marker may list: one relative path component, not '.' or '..'."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def valid_relative(name: Any) -> bool:
    """A file of final/: relative, no '..', no absolute path."""
    if not isinstance(name, str) or not name or "\0" in name:
        return False
    path = Path(name)
    return not path.is_absolute() and ".." not in path.parts


class RunDir:
    """One run's claim on its output directory (file operations on the main process only)."""

    def __init__(self, path: Path, where: str):
        self.path = path
        self.where = where
        self._lock_fd: int | None = None

    # -- what is there -------------------------------------------------------------------------
    def marker(self) -> dict[str, Any]:
        """The marker's valid content, or for a run from before markers, what such a run wrote."""
        path = self.path / MARKER
        empty: dict[str, Any] = {"entries": [], "final_files": []}
        if path.is_symlink():
            return empty
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self._inferred()
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return empty
        if not isinstance(body, dict):
            return empty
        entries = [e for e in body.get("entries", []) or [] if valid_name(e)]
        finals = [f for f in body.get("final_files", []) or [] if valid_relative(f)]
        return {"entries": entries, "final_files": finals}

    def _inferred(self) -> dict[str, Any]:
        if (self.path / "metrics.jsonl").is_file() and (self.path / "recipe.toml").is_file():
            final = self.path / "final"
            files = (
                [str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()]
                if final.is_dir() and not final.is_symlink()
                else []
            )
            present = [n for n in TUNE_FILES + TUNE_DIRS if _exists(self.path / n)]
            return {"entries": present, "final_files": files}
        return {"entries": [], "final_files": []}

    def has_run(self) -> bool:
        return any(_exists(self.path / name) for name in RUN_RECORDS)

    def foreign(self, *, deleting: bool = False) -> list[str]:
        """Files where tune would write (or, `deleting`, inside what it would delete) that tune
        did not write, as paths relative to the run directory."""
        mark = self.marker()
        owned = set(mark["entries"])
        found = [n for n in TUNE_FILES + TUNE_DIRS if _exists(self.path / n) and n not in owned]
        found += [n for n in owned if (self.path / n).is_symlink()]  # tune writes no links
        final = self.path / "final"
        if "final" in owned and final.is_dir() and not final.is_symlink():
            mine = set(mark["final_files"])
            found += [
                f"final/{p.relative_to(final)}"
                for p in sorted(final.rglob("*"))
                if (p.is_file() or p.is_symlink()) and str(p.relative_to(final)) not in mine
            ]
        ckpts = self.path / "checkpoints"
        if "checkpoints" in owned and ckpts.is_dir() and not ckpts.is_symlink():
            for child in sorted(ckpts.iterdir()):
                if child.name.startswith(TEMPORARY):
                    continue
                if not STEP_DIR.match(child.name) or child.is_symlink() or not child.is_dir():
                    found.append(f"checkpoints/{child.name}")
                elif deleting:
                    found += _foreign_in_checkpoint(child)
        return sorted(set(found))

    # -- claiming ------------------------------------------------------------------------------
    def claim_run(self, *, resume: bool, overwrite: bool, has_checkpoint: bool) -> None:
        """Create and lock the folder, refuse what would lose work, clear the previous run
        for --overwrite."""
        self._create()
        self.lock()
        try:
            self._check(resume=resume, overwrite=overwrite, has_checkpoint=has_checkpoint)
        except BaseException:
            self.release()
            raise
        mark = self.marker() if resume else {"entries": [], "final_files": []}
        self.write_marker(mark["entries"], mark["final_files"])

    def _create(self) -> None:
        if self.path.is_symlink() and not self.path.is_dir():
            raise TuneError(
                f"output_dir '{self.path}' is a link to something that is not a folder.",
                where=self.where,
                fix="point output_dir at a folder, or remove the link.",
            )
        if self.path.exists() and not self.path.is_dir():
            raise TuneError(
                f"output_dir '{self.path}' is a file, not a folder.",
                where=self.where,
                fix="choose another -o train.output_dir=..., or move the file away.",
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TuneError(
                f"cannot create output_dir '{self.path}': {exc.strerror or exc}.",
                where=self.where,
                fix="choose a folder you can write to (-o train.output_dir=...).",
            ) from None

    def _check(self, *, resume: bool, overwrite: bool, has_checkpoint: bool) -> None:
        foreign = self.foreign(deleting=overwrite and not resume)
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
            unfinished = not _exists(self.path / "final") and not has_checkpoint
            detail = (
                " It stopped before its first checkpoint, so --resume starts it again from step 0."
                if unfinished
                else ""
            )
            raise TuneError(
                f"output_dir '{self.path}' already holds a run "
                f"({', '.join(n for n in RUN_RECORDS if _exists(self.path / n))}).{detail}",
                where=self.where,
                fix="continue it with --resume, pick another directory with "
                "-o train.output_dir=..., or replace it with --overwrite.",
            )
        self.remove_owned()

    def remove_owned(self) -> None:
        """--overwrite: delete what the previous run wrote, and nothing else (checked first)."""
        mark = self.marker()
        for name in mark["entries"]:
            target = self.path / name
            if not inside(target, self.path) or not _exists(target):
                continue
            if name == "final" and target.is_dir() and not target.is_symlink():
                for rel in mark["final_files"]:
                    path = target / rel
                    if inside(path, target) and (path.is_file() or path.is_symlink()):
                        path.unlink()
                _remove_empty_dirs(target)
            elif name == "checkpoints" and target.is_dir() and not target.is_symlink():
                for child in target.iterdir():
                    if STEP_DIR.match(child.name) or child.name.startswith(TEMPORARY):
                        remove(child, self.path)
                _remove_empty_dirs(target)
            else:
                remove(target, self.path)
        self.write_marker([], [])

    def claim(self, name: str) -> Path:
        """`name` (one relative component) is written by this run from now on; returns its
        path. Refused when something tune did not write is there."""
        if not valid_name(name):
            raise ValueError(f"a run may claim a plain name in its folder, not {name!r}")
        target = self.path / name
        mark = self.marker()
        if name in mark["entries"]:
            return target
        if _exists(target):
            raise TuneError(
                f"output_dir '{self.path}' already holds '{name}', which this run would write "
                "and tune did not write.",
                where=self.where,
                fix="move it elsewhere, or choose another -o train.output_dir=....",
            )
        self.write_marker(sorted({*mark["entries"], name}), mark["final_files"])
        return target

    def write_marker(self, entries: list[str], final_files: list[str]) -> None:
        body = {"owner": "tune", "entries": entries, "final_files": final_files}
        write_text(self.path / MARKER, json.dumps(body, indent=1))

    def record_final(self) -> None:
        """After final/ was written: remember it and its files as tune's."""
        final = self.path / "final"
        files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
        entries = sorted({*self.marker()["entries"], "final"})
        self.write_marker(entries, files)

    def check_final(self) -> None:
        """final/ may be replaced: nothing there but what tune wrote (claim refused the rest)."""
        final = self.path / "final"
        if not _exists(final):
            return
        if "final" not in self.marker()["entries"] or final.is_symlink():
            left = ["final"]
        else:
            left = [f for f in self.foreign() if f.startswith("final/")]
        if left:
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
        if path.is_symlink():
            raise TuneError(
                f"'{path}' is a symbolic link; tune's lock file is a plain file.",
                where=self.where,
                fix="remove the link.",
            )
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
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
        """Drop the lock by closing the file. The file stays: see the module docstring."""
        if self._lock_fd is None:
            return
        os.close(self._lock_fd)
        self._lock_fd = None


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _foreign_in_checkpoint(folder: Path) -> list[str]:
    """Files of a checkpoint folder that its manifest does not list (a user's)."""
    listed = manifest.listed_files(folder)
    if listed is None:  # no manifest: a checkpoint tune wrote holds only what tune writes
        return []
    return [
        f"checkpoints/{folder.name}/{p.relative_to(folder).as_posix()}"
        for p in sorted(folder.rglob("*"))
        if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() not in listed
    ]


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
    for folder in sorted(
        (p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True
    ):
        if not any(folder.iterdir()):
            folder.rmdir()
    if root.is_dir() and not root.is_symlink() and not any(root.iterdir()):
        root.rmdir()
