"""Pieces for tests that attack a run folder: a pickle that would run code, a manifest
recomputed as an attacker would, and the one-paragraph refusal a `tune` command must give.

Strategy plugins that save their own checkpoint files use these to show that a crafted file
is refused before any library unpickles it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path


class CodeRunningPickle:
    """Unpickling this runs `touch MARKER`: the test asserts MARKER never appears."""

    def __init__(self, marker: Path | str):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def rewrite_manifest(checkpoint: Path) -> None:
    """Record a checkpoint's files as they are now in its manifest.json (sizes and sha256),
    as an attacker who changed a file would: only the pickle check can then tell."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"] = {
        p.relative_to(checkpoint).as_posix(): {
            "bytes": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    (checkpoint / "manifest.json").write_text(json.dumps(manifest, indent=1))


def refusal_paragraph(res: subprocess.CompletedProcess) -> str:
    """The one-paragraph refusal of a `tune` command that exited 2, joined into one line."""
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    err = res.stderr[res.stderr.index("error:") :].strip()
    assert err.count("error:") == 1 and "\n\n" not in err, err
    return " ".join(err.split())
