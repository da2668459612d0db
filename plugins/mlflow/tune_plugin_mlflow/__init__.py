"""Tracker `mlflow`: the run as an MLflow run, by default in a SQLite store in the run dir.

Params are the resolved recipe flattened ("optimizer.lr"), metrics are logged by step, samples
are a table artifact, and at the end final/ and summary.json are the run's artifacts.
`--resume` continues the same MLflow run (its id is saved in `state()`), metrics going on from
the checkpoint step; the steps training replays after the checkpoint that the run already holds
are not logged again (MLflow cannot delete a metric point). Uses `MlflowClient` only (no fluent
global "active run"), so several runs in one process never mix. What it writes inside the run
directory (mlflow.db, mlartifacts/) is claimed first, so the run owns it. Imports nothing heavy
at the top: `tune plugins list` imports it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import Field
from tune.plugin import RunInfo, Settings, Tracker, TuneError, hookimpl

TUNE_API = ">=2,<3"

MAX_PARAM_KEY = 250  # MLflow's limits on a param's key and value
MAX_PARAM_VALUE = 6000
BATCH = 100  # params per log_batch call (MLflow refuses more)


class MlflowSettings(Settings):
    """Keys of a `[[track]] name = "mlflow"` table."""

    tracking_uri: str | None = Field(
        None, description='default "sqlite:///<output_dir>/mlflow.db"; or a server URL'
    )
    experiment: str = Field("tune", description="experiment name (created when missing)")
    run_name: str | None = Field(None, description="run name; default the run dir's name")
    artifact_location: str | None = Field(
        None,
        description="where a new experiment keeps artifacts; default <output_dir>/mlartifacts "
        "for the default SQLite store, the server's choice otherwise",
    )
    log_final: bool = Field(True, description="log final/ as artifacts at the end")


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """{"optimizer": {"lr": 1e-3}} -> {"optimizer.lr": "0.001"}; lists of tables get indices."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(data, list) and any(isinstance(v, dict) for v in data):
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}{i}."))
    else:
        text = data if isinstance(data, str) else json.dumps(data, default=str)
        out[prefix[:-1][:MAX_PARAM_KEY]] = text[:MAX_PARAM_VALUE]
    return out


def local_path(location: str) -> Path | None:
    """The local file a tracking URI or artifact location names (sqlite:///x.db, file:///x, a
    plain path), or None for a server, a database or a cloud bucket."""
    if location == "databricks":
        return None
    if location.startswith("sqlite:///"):
        return Path(location[len("sqlite:///") :].split("?")[0]).expanduser()
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).expanduser()
    if parsed.scheme and len(parsed.scheme) > 1:  # (a one-letter "scheme" is a Windows drive)
        return None
    return Path(location).expanduser()


def claim(ctx: Any, output_dir: Path, path: Path | None, key: str) -> None:
    """Claim the run-directory entry `path` lies in (the run then owns it: --overwrite removes
    it, a user's file of that name is refused); nothing when it is outside the run directory."""
    if path is None:
        return
    try:
        inside = path.resolve().relative_to(output_dir.resolve())
    except ValueError:
        return
    if not inside.parts:
        raise TuneError(
            f"[[track]] mlflow {key} is the run directory itself.",
            fix=f"leave {key} out (the default is inside the run directory), or name a path "
            "within or outside it.",
        )
    if ctx is not None:
        ctx.claim(inside.parts[0])


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class MlflowTracker(Tracker):
    """One MLflow run per tune run; the same run id across --resume."""

    run_id: str | None = None

    def start(self, run: RunInfo) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        s = self.settings
        self.output_dir = Path(run.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # (metric key, step) and sample steps the run holds from after the checkpoint
        self.held: set[tuple[str, int]] = set()
        self.held_samples: set[int] = set()
        store = local_path(s.tracking_uri) if s.tracking_uri else self.output_dir / "mlflow.db"
        claim(self.ctx, self.output_dir, store, "tracking_uri")
        if s.artifact_location is not None:
            claim(self.ctx, self.output_dir, local_path(s.artifact_location), "artifact_location")
        elif s.tracking_uri is None:  # the default store keeps artifacts in the run directory
            claim(self.ctx, self.output_dir, self.output_dir / "mlartifacts", "artifact_location")
        uri = s.tracking_uri or f"sqlite:///{store.resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        previous = run.state.get("run_id") if run.resumed else None
        if previous:
            self.run_id = previous
            self.client.update_run(previous, status="RUNNING")
            self._replayed(previous, run.step)
        else:
            self.run_id = self.client.create_run(
                self._experiment_id(uri), run_name=s.run_name or run.name
            ).info.run_id
        params = flatten(run.recipe)
        if previous:  # params are immutable in MLflow: log only new keys, tag changed ones
            known = self.client.get_run(previous).data.params
            changed = {k: v for k, v in params.items() if k in known and known[k] != v}
            if changed:
                self.client.set_tag(self.run_id, "tune.resumed_with", json.dumps(changed)[:5000])
            params = {k: v for k, v in params.items() if k not in known}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + BATCH])

    def _replayed(self, run_id: str, step: int) -> None:
        """What the run holds after `step`: training replays those steps; logging them again
        would give MLflow two points per step (it cannot delete one)."""
        for key in self.client.get_run(run_id).data.metrics:
            for point in self.client.get_metric_history(run_id, key):
                if point.step > step:
                    self.held.add((key, point.step))
        for item in self.client.list_artifacts(run_id, "samples"):
            logged = Path(item.path).name.removeprefix("step-").removesuffix(".json")
            if logged.isdigit() and int(logged) > step:
                self.held_samples.add(int(logged))

    def _experiment_id(self, uri: str) -> str:
        s = self.settings
        found = self.client.get_experiment_by_name(s.experiment)
        if found is not None:
            return found.experiment_id
        location = s.artifact_location
        if location is None and s.tracking_uri is None:
            location = (self.output_dir / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(s.experiment, artifact_location=location)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        prefix = "" if kind == "train" else f"{kind}_"
        named = {k if k.startswith(prefix) else prefix + k: v for k, v in _scalars(values).items()}
        metrics = [Metric(k, v, now, step) for k, v in named.items() if (k, step) not in self.held]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def checkpoint(self, step: int, path: Path) -> None:
        self.client.set_tag(self.run_id, "tune.last_checkpoint", str(path))

    def samples(self, step: int, samples: list[dict[str, str]]) -> None:
        if not samples or step in self.held_samples:  # log_table would append a replay
            return
        table = {
            "step": [step] * len(samples),
            "prompt": [s.get("prompt", "") for s in samples],
            "reply": [s.get("reply", "") for s in samples],
        }
        self.client.log_table(self.run_id, data=table, artifact_file=f"samples/step-{step}.json")

    def end(self, summary: dict[str, Any]) -> None:
        final = self.output_dir / "final"
        if self.settings.log_final and final.is_dir():
            self.client.log_artifacts(self.run_id, str(final), artifact_path="final")
        self.client.log_dict(self.run_id, summary, "summary.json")
        self.client.set_terminated(self.run_id, "FINISHED")

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id else {}


@hookimpl
def tune_provide(provide):
    provide.tracker(
        "mlflow",
        MlflowSettings,
        requires=("mlflow",),
        doc="MLflow (local SQLite by default): recipe params, metrics by step, artifacts",
        build=MlflowTracker,
    )
