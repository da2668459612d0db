"""The run context handed to every hook: recipe, output dir, world, collectives, console, events."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from tune.contract.collectives import Collectives
from tune.contract.tracker import Trackers
from tune.recipe import Recipe


@dataclass
class World:
    """Where this process sits: set by the strategy before anything is loaded."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class RunContext:
    """What plugins may know about the run. Plugins talk to the core only through this.

    `recipe` is read-only. `strategy` is the run's Strategy (set before the model loads; None
    outside a training run, e.g. `tune merge`). `collectives` reduces over the run's ranks.
    `metrics` is the event sink the trackers hang off (main process):
    `ctx.metrics.log("train", step, {...})` reaches metrics.jsonl and every `[[track]]`.
    `claim(name)` gives a plugin a path in the run directory that the run then owns.
    """

    recipe: Recipe
    output_dir: Path
    world: World = field(default_factory=World)
    strategy: Any = None
    collectives: Collectives = field(default_factory=Collectives)
    console: Console = field(default_factory=Console)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tune"))
    metrics: Trackers = field(default_factory=lambda: Trackers({}))
    # The run directory's owner (tune.train.rundir.RunDir) during `tune run`; None elsewhere.
    run_dir: Any = None

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print on the main process only."""
        if self.world.is_main:
            self.console.print(*args, **kwargs)

    def claim(self, name: str) -> Path:
        """`output_dir / name`, recorded as written by this run: `--overwrite` removes it and a
        new run in the folder refuses to start over a user's file of that name. `name` is
        relative (a file or folder, e.g. "tensorboard"); claim before writing (main process).
        Outside `tune run` it is only joined to `output_dir`."""
        if self.run_dir is None:
            return self.output_dir / name
        return self.run_dir.claim(name)
