"""The run context handed to every hook: recipe, output dir, world, console, metrics sink."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
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


class MetricsSink:
    """Appends one JSON object per event to `metrics.jsonl`; only the main process writes."""

    def __init__(self, path: Path | None, enabled: bool = True):
        self.path = path
        self.enabled = enabled and path is not None
        self.records: list[dict[str, Any]] = []

    def log(self, kind: str, step: int, **values: Any) -> None:
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.records.append(record)
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


@dataclass
class RunContext:
    """What plugins may know about the run. Plugins talk to the core only through this."""

    recipe: Recipe
    output_dir: Path
    world: World = field(default_factory=World)
    console: Console = field(default_factory=Console)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tune"))
    metrics: MetricsSink = field(default_factory=lambda: MetricsSink(None))
    quantization_config: Any = None
    # Parameter-name fragments an [[adapt]] step wants trainable whatever later steps freeze
    # (beacon weights stay trainable when LoRA follows and freezes everything else).
    keep_trainable: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print on the main process only."""
        if self.world.is_main:
            self.console.print(*args, **kwargs)
