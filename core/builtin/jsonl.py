"""Tracker `jsonl`: metrics.jsonl (and samples.jsonl) in the run directory, a JSON object a line.

Always on (the core adds it to every run): it is the record `--resume`, the loss plot and the
tests read, and the one that survives when another tracker fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tune.plugin import RunInfo, Tracker, hookimpl


class JsonlTracker(Tracker):
    def start(self, run: RunInfo) -> None:
        self.dir: Path = run.output_dir
        if run.resumed:  # the steps after the checkpoint are trained again: no duplicates
            for name in ("metrics.jsonl", "samples.jsonl"):
                self._truncate(self.dir / name, run.step)

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a kill
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line + "\n")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)

    def _write(self, name: str, records: list[dict[str, Any]]) -> None:
        path = self.ctx.claim(name) if self.ctx is not None else self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(record) + "\n" for record in records)

    def _event(self, kind: str, step: int, values: dict[str, Any]) -> dict[str, Any]:
        return {"kind": kind, "step": step, "time": round(time.time(), 3), **values}

    def log(self, kind, step, values):
        self._write("metrics.jsonl", [self._event(kind, step, values)])

    def checkpoint(self, step, path):
        self._write("metrics.jsonl", [self._event("checkpoint", step, {"path": str(path)})])

    def samples(self, step, samples):
        """samples.jsonl: one line per prompt and step, so a user sees the model change."""
        self._write("samples.jsonl", [{"step": step, **sample} for sample in samples])


@hookimpl
def tune_provide(provide):
    provide.tracker(
        "jsonl", doc="metrics.jsonl in the run directory (always on)", build=JsonlTracker
    )
