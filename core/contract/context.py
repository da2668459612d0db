"""The run context handed to every hook: recipe, output dir, world, console, metrics sink."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
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

    `recipe` is read-only. `metrics` is the event sink the trackers hang off (main process):
    `ctx.metrics.log("train", step, {...})` reaches metrics.jsonl and every `[[track]]`.
    """

    recipe: Recipe
    output_dir: Path
    world: World = field(default_factory=World)
    strategy: Any = None  # the run's Strategy (set before the model loads)
    console: Console = field(default_factory=Console)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("tune"))
    metrics: Trackers = field(default_factory=lambda: Trackers({}))
    quantization_config: Any = None
    # Where the loader reads the weights from (a local folder or hub id), set before it asks the
    # strategy `loading`/`loads_weights`: a sharding strategy may read its shard from there.
    # None when they are not plain safetensors there (GGUF input, a pinned revision).
    checkpoint: str | None = None
    # Parameter-name fragments an [[adapt]] step wants trainable whatever later steps freeze
    # (beacon weights stay trainable when LoRA follows and freezes everything else).
    keep_trainable: list[str] = field(default_factory=list)
    # Free space for plugins to share state between their own hooks within one run.
    extras: dict[str, Any] = field(default_factory=dict)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print on the main process only."""
        if self.world.is_main:
            self.console.print(*args, **kwargs)
