"""Tracker `wandb`: the run as a Weights & Biases run (online, offline or disabled).

The resolved recipe is the run's config; train and eval metrics are logged by step
("train/loss", "eval/eval_loss"); samples are a `wandb.Table`; `log_artifact = true` logs
final/ as a model artifact at the end. `--resume` continues the same W&B run: its id is saved in
`state()` and handed to `wandb.init(id=..., resume="allow")`. W&B keeps one value per step, so
the steps training replays after the checkpoint that the run already holds are not logged
again: the last step logged is kept beside wandb's files (`wandb/tune-<run id>.json`; online,
W&B's own starting step says it too). The wandb/ folder in the run directory is claimed first,
so the run owns it. The API key comes only from the environment (WANDB_API_KEY) or wandb's own
login; tune never reads or writes it.
Imports nothing heavy at the top: `tune plugins list` imports this module.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from tune.plugin import RunInfo, Settings, Tracker, hookimpl

TUNE_API = ">=2,<3"


class WandbSettings(Settings):
    """Keys of a `[[track]] name = "wandb"` table."""

    project: str = Field("tune", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (user or team); default yours")
    run_name: str | None = Field(None, description="run name; default the run dir's name")
    tags: list[str] = Field(default_factory=list, description="run tags")
    group: str | None = Field(None, description="run group")
    notes: str | None = Field(None, description="run notes")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online", description="offline writes local files only (`wandb sync` later)"
    )
    dir: str | None = Field(None, description="where wandb/ goes; default the run dir")
    log_artifact: bool = Field(False, description="log final/ as a model artifact at the end")
    artifact_name: str | None = Field(None, description="artifact name; default '<run>-final'")


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def claim(ctx: Any, output_dir: Path, path: Path) -> None:
    """Claim the run-directory entry `path` is in (the run then owns it: --overwrite removes it,
    a user's folder of that name is refused); nothing when it is outside the run directory."""
    try:
        inside = path.resolve().relative_to(output_dir.resolve())
    except ValueError:
        return
    if ctx is not None and inside.parts:
        ctx.claim(inside.parts[0])


def read_last_step(path: Path) -> int:
    """The last step a W&B run was logged at, from the file `log` keeps; -1 when unknown."""
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["last_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


class WandbTracker(Tracker):
    """One wandb run per tune run; the same run (same id) across --resume."""

    run: Any = None

    def start(self, run: RunInfo) -> None:
        import wandb

        s = self.settings
        self.output_dir = Path(run.output_dir)
        self.name = s.run_name or run.name
        folder = Path(s.dir).expanduser() if s.dir else self.output_dir
        claim(self.ctx, self.output_dir, folder / "wandb")  # where wandb writes, under dir
        folder.mkdir(parents=True, exist_ok=True)
        run_id = run.state.get("run_id") if run.resumed else None
        self.run = wandb.init(
            project=s.project,
            entity=s.entity,
            name=self.name,
            tags=list(s.tags) or None,
            group=s.group,
            notes=s.notes,
            mode=s.mode,
            dir=str(folder),
            config=run.recipe,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",
            settings=wandb.Settings(console="off", quiet=True),
        )
        # The x axis of every chart is tune's step, for train and eval keys alike.
        self.run.define_metric("step")
        self.run.define_metric("train/*", step_metric="step")
        self.run.define_metric("eval/*", step_metric="step")
        # On resume, training replays the steps after the checkpoint; W&B keeps one value per
        # step and the run may hold those already (the interrupted session logged them).
        self.steps_file = folder / "wandb" / f"tune-{self.run.id}.json"
        self.last = -1
        if run_id:
            self.last = max(read_last_step(self.steps_file), self.run.starting_step - 1)
        self.held = self.last

    def _logged(self, step: int) -> None:
        if step <= self.last or not self.steps_file.parent.is_dir():
            return
        self.last = step
        tmp = self.steps_file.with_name(self.steps_file.name + ".tmp")
        tmp.write_text(json.dumps({"last_step": step}), encoding="utf-8")
        os.replace(tmp, self.steps_file)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if step <= self.held:  # a replayed step the run holds
            return
        data = {f"{kind}/{k}": v for k, v in _scalars(values).items()}
        self.run.log({**data, "step": step}, step=step)
        self._logged(step)

    def checkpoint(self, step: int, path: Path) -> None:
        self.run.summary["last_checkpoint"] = str(path)

    def samples(self, step: int, samples: list[dict[str, str]]) -> None:
        if not samples or step <= self.held:
            return
        import wandb

        table = wandb.Table(columns=["step", "prompt", "reply"])
        for s in samples:
            table.add_data(step, s.get("prompt", ""), s.get("reply", ""))
        self.run.log({"samples": table}, step=step)
        self._logged(step)

    def end(self, summary: dict[str, Any]) -> None:
        for key, value in summary.items():
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                self.run.summary[f"tune/{key}"] = value
        final = self.output_dir / "final"
        if self.settings.log_artifact and final.is_dir():
            import wandb

            name = self.settings.artifact_name or f"{self.name}-final"
            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", name), type="model")
            artifact.add_dir(str(final))
            self.run.log_artifact(artifact)
        self.run.finish()

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run.id} if self.run is not None else {}


@hookimpl
def tune_provide(provide):
    provide.tracker(
        "wandb",
        WandbSettings,
        requires=("wandb",),
        doc="Weights & Biases: config, metrics by step, samples table, final/ artifact",
        build=WandbTracker,
    )
