"""`Tracker`: the object a tracker backend declares (`build=`); the loop's event stream.

Trackers exist on the main process only. Each receives the same stream: `start` (with the
resolved recipe), `log` for every logged train step and every eval, `checkpoint`, `samples`,
`end` with the summary. `state()` is saved in each checkpoint and handed back to `start` on
`--resume`, so a tracker can continue the same run (same run id). metrics.jsonl is the built-in
tracker `jsonl`, always on. A tracker that raises is warned about once and dropped; the run goes
on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """What a tracker learns at the start of a run."""

    recipe: dict[str, Any]  # the resolved recipe, every default filled in
    output_dir: Path
    name: str  # a run name: the output directory's name
    step: int = 0  # the step training starts from (> 0 on resume)
    resumed: bool = False
    state: dict[str, Any] = field(default_factory=dict)  # what `state()` returned, on resume
    # On resume: the last train step the interrupted session logged (metrics.jsonl), which may
    # be past `step`: a tracker that cannot delete points skips the steps up to it.
    logged_until: int = 0


class Tracker:
    """Base class of trackers; every method is optional (a no-op here)."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        self.settings = settings
        self.ctx = ctx

    def start(self, run: RunInfo) -> None:
        """The run starts (or resumes: `run.resumed`, `run.state`)."""

    def log(self, kind: str, step: int, values: dict[str, float]) -> None:
        """Metrics at `step`: kind "train" (every log_every steps) or "eval"."""

    def checkpoint(self, step: int, path: Path) -> None:
        """A checkpoint was written (complete) at `path`."""

    def samples(self, step: int, samples: list[dict[str, str]]) -> None:
        """Generations of the [generate] prompts: [{"prompt": ..., "reply": ...}]."""

    def end(self, summary: dict[str, Any]) -> None:
        """The run ended: `summary` is what summary.json holds; final/ is written."""

    def state(self) -> dict[str, Any]:
        """JSON-able state saved with each checkpoint (e.g. the tracker's run id). On resume
        it comes back in `start` (`run.state`), and training replays the steps after that
        checkpoint: a tracker that appends must drop what it logged after `run.step`."""
        return {}


class Trackers:
    """The core's side: fans each event out, isolates failures, keeps the records in memory."""

    def __init__(self, trackers: dict[str, Tracker], console: Any = None):
        self.trackers = dict(trackers)
        self.console = console
        self.records: list[dict[str, Any]] = []

    def _call(self, name: str, method: str, *args: Any) -> None:
        tracker = self.trackers.get(name)
        if tracker is None:
            return
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:  # a tracker never stops training
            self._drop(name, method, exc)

    def _drop(self, name: str, method: str, exc: Exception) -> None:
        del self.trackers[name]
        if self.console is not None:
            self.console.print(
                f"[yellow]warning:[/yellow] tracker '{name}' failed in {method} "
                f"({type(exc).__name__}: {exc}); it is off for the rest of the run, "
                "metrics.jsonl keeps everything.",
                markup=True,
                highlight=False,
            )

    def _each(self, method: str, *args: Any) -> None:
        for name in list(self.trackers):
            self._call(name, method, *args)

    def start(self, run: RunInfo, states: dict[str, dict[str, Any]]) -> None:
        for name in list(self.trackers):
            self._call(name, "start", dataclasses.replace(run, state=states.get(name, {})))

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        self.records.append({"kind": kind, "step": step, **values})
        self._each("log", kind, step, values)

    def checkpoint(self, step: int, path: Path) -> None:
        self._each("checkpoint", step, path)

    def samples(self, step: int, samples: list[dict[str, str]]) -> None:
        self._each("samples", step, samples)

    def end(self, summary: dict[str, Any]) -> None:
        self._each("end", summary)

    def states(self) -> dict[str, dict[str, Any]]:
        """Each live tracker's `state()`, for the checkpoint. A tracker whose `state()` fails (or
        is not JSON) is dropped with one warning, as for any other event: a resume could not
        continue its run."""
        import json

        out = {}
        for name in list(self.trackers):
            tracker = self.trackers[name]
            try:
                state = tracker.state()
                json.dumps(state)
            except Exception as exc:
                self._drop(name, "state", exc)
                continue
            out[name] = state
        return out
