"""Tracker `jsonl`: metrics.jsonl in the run directory, one JSON object per event.

Always on (the core adds it to every run): it is the record `--resume`, the loss plot and the
tests read, and the one that survives when another tracker fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tune.hookspecs import hookimpl
from tune.train.tracker import RunInfo, Tracker


class JsonlTracker(Tracker):
    def start(self, run: RunInfo) -> None:
        self.path: Path = run.output_dir / "metrics.jsonl"

    def _write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def log(self, kind, step, values):
        self._write(kind, step, values)

    def checkpoint(self, step, path):
        self._write("checkpoint", step, {"path": str(path)})

    def samples(self, step, samples):
        self._write("samples", step, {"samples": samples})


@hookimpl
def tune_provide(provide):
    provide.tracker("jsonl", doc="metrics.jsonl in the run directory (always on)")


@hookimpl
def tune_build_tracker(settings, ctx):
    return JsonlTracker(settings, ctx)
