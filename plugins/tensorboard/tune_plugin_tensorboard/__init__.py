"""Tracker `tensorboard`: the run's metrics, samples and recipe as TensorBoard event files.

Writes with `torch.utils.tensorboard.SummaryWriter` (backed by the `tensorboard` package's
event-file writer): it needs no TensorFlow, and its `purge_step` writes the marker TensorBoard's
readers use to drop points after a resume step, so a resumed run shows no duplicate points.
The default log dir, inside the run directory, is claimed first, so the run owns it.
Imports nothing heavy at the top: `tune plugins list` imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field
from tune.plugin import RunInfo, Settings, Tracker, TuneError, hookimpl

TUNE_API = ">=2,<3"


class TensorBoardSettings(Settings):
    """Keys of a `[[track]] name = "tensorboard"` table."""

    log_dir: str | None = Field(
        None, description='event file folder; default "<output_dir>/tensorboard"'
    )
    flush_secs: int = Field(30, ge=1, description="seconds between flushes to disk")


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def samples_markdown(samples: list[dict[str, str]]) -> str:
    """A Markdown table (TensorBoard's text plugin renders it)."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", "<br>")

    rows = [f"| {cell(s.get('prompt', ''))} | {cell(s.get('reply', ''))} |" for s in samples]
    return "\n".join(["| prompt | reply |", "|---|---|", *rows])


def claim(ctx: Any, output_dir: Path, log_dir: Path) -> None:
    """Claim the run-directory entry the log dir is in (the run then owns it: --overwrite
    removes it, a user's folder of that name is refused); nothing when it is outside."""
    try:
        inside = log_dir.resolve().relative_to(output_dir.resolve())
    except ValueError:
        return
    if not inside.parts:
        raise TuneError(
            "[[track]] tensorboard log_dir is the run directory itself.",
            fix='leave log_dir out (default "<output_dir>/tensorboard"), or name a folder '
            "within or outside the run directory.",
        )
    if ctx is not None:
        ctx.claim(inside.parts[0])


class TensorBoardTracker(Tracker):
    """One SummaryWriter on the run's log dir; on resume, the same dir purged after the step."""

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        default = Path(run.output_dir) / "tensorboard"
        self.log_dir = Path(self.settings.log_dir or default).expanduser()
        claim(self.ctx, Path(run.output_dir), self.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # purge_step: readers drop every point at or after it logged before this session.
        purge = run.step + 1 if run.resumed else None
        self.writer = SummaryWriter(
            str(self.log_dir), purge_step=purge, flush_secs=self.settings.flush_secs
        )
        if not run.resumed:
            text = json.dumps(run.recipe, indent=2, default=str)
            self.writer.add_text("recipe", "```\n" + text + "\n```", 0)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        for key, value in _scalars(values).items():
            self.writer.add_scalar(f"{kind}/{key}", value, step)

    def checkpoint(self, step: int, path: Path) -> None:
        self.writer.add_text("checkpoints", str(path), step)
        self.writer.flush()

    def samples(self, step: int, samples: list[dict[str, str]]) -> None:
        if samples:
            self.writer.add_text("samples", samples_markdown(samples), step)

    def end(self, summary: dict[str, Any]) -> None:
        step = int(summary.get("steps", 0) or 0)
        text = json.dumps(summary, indent=2, default=str)
        self.writer.add_text("summary", "```\n" + text + "\n```", step)
        self.writer.close()

    def state(self) -> dict[str, Any]:
        return {"log_dir": str(self.log_dir)}


@hookimpl
def tune_provide(provide):
    provide.tracker(
        "tensorboard",
        TensorBoardSettings,
        requires=("tensorboard",),
        doc="TensorBoard event files under the run dir: scalars, samples, recipe",
        build=TensorBoardTracker,
    )
