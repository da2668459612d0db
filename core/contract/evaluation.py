"""`EvalData`: what `tune_evaluate` receives: this rank's eval examples and the means to run them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tune.contract.collectives import Collectives


@dataclass
class EvalData:
    """This rank's share of the eval examples.

    `batches()` yields collated micro-batches already on `device` (collated by the run's
    objective); `autocast()` is the strategy's precision context, as around training's loss;
    `collectives.all_reduce_sum(x)` sums a number over ranks (call it the same number of times
    on every rank). Every rank holds the same number of examples: the last ones may be padding
    rows with no targets.
    """

    examples: list[dict[str, Any]]
    batch_size: int
    pad_id: int
    device: str
    max_batches: int = 0
    tokenizer: Any = None
    objective: Any = None
    collectives: Collectives = field(default_factory=Collectives)
    world_size: int = 1
    # Parameters are sharded across ranks: a metric that generates must run on every rank, in
    # lockstep (`synced_gpus`), even on ranks with nothing left to score.
    lockstep: bool = False
    precision: Callable[[], Any] = contextlib.nullcontext

    def batches(self):
        for i in range(0, len(self.examples), self.batch_size):
            if self.max_batches and i // self.batch_size >= self.max_batches:
                return
            batch = self.objective.collate(self.examples[i : i + self.batch_size], self.pad_id)
            yield {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self) -> Any:
        return self.precision()
