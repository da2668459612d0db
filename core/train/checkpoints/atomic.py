"""Writing so that a kill at any moment leaves either the old version or the new one, whole.

One helper for directories (checkpoints, final/, merged models, exports) and one for files
(recipe.toml, summary.json, the run marker). Both replace what is at the destination instead of
writing through it, so a symbolic link planted there is replaced, never followed. Removal never
follows a link and never leaves the folder it was given (`remove`). Imports no torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tune.errors import TuneError


def inside(path: Path, root: Path) -> bool:
    """Whether `path` (not following a final link) lies within `root`."""
    try:
        parent = path.parent.resolve()
        return (parent / path.name).is_relative_to(root.resolve()) and path.name not in ("", "..")
    except (OSError, RuntimeError):
        return False


def remove(path: Path, root: Path) -> None:
    """Delete a file, a link (the link itself) or a folder under `root`, never following a link
    out of it. A path outside `root` is a bug, not a user mistake."""
    if not inside(path, root):
        raise RuntimeError(f"refusing to delete {path}: it is not inside {root}")
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)  # unlinks links inside the tree, never follows them


def write_text(path: Path, text: str) -> None:
    """`path` holds `text` entirely or keeps its old content; a link there is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_name(final: Path) -> Path:
    """The temporary sibling a directory is written in before it takes `final`'s place (the same
    name on every rank of a run, so all of them write into it)."""
    return final.parent / f".tmp-{final.name}"


@contextlib.contextmanager
def atomic_dir(
    final: Path, root: Path, *, main: bool = True, unique: bool = False
) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; when the block ends without error it
    replaces `final` (renamed into place), otherwise it is removed and `final` is untouched.

    `root` bounds what may be deleted (the run directory, or `final`'s parent). `main` is False
    on the ranks of a run that write into the folder but do not create or rename it (the caller
    synchronizes them). `unique` picks a name no other process uses (`tune merge`, `export`),
    so a leftover temporary folder of the same name, which may be someone's, is never removed.
    """
    if unique:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    else:
        tmp = staging_name(final)
        if main:
            if tmp.exists() or tmp.is_symlink():
                remove(tmp, root)
            tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        if main:
            with contextlib.suppress(OSError):
                remove(tmp, root)
        raise
    if not main:
        return
    old = None
    if final.exists() or final.is_symlink():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        remove(old, root)


def refuse_file_as_dir(path: Path, where: str) -> None:
    """A folder tune must write that is a file (or a link to one): one paragraph, no traceback."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        what = "a symbolic link" if path.is_symlink() else "a file"
        raise TuneError(
            f"'{path}' is {what}, where tune needs a folder of its own.",
            where=where,
            fix="choose another path, or move it away.",
        )
