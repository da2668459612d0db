"""`Objective`: the object an objective backend declares (`build=`). The loss of a step.

The core plans micro-batches, asks the objective to collate them, counts the units the step's
loss is normalized by (`count`: target tokens, pairs, sequences) over every micro-batch of the
optimizer step and every rank, then calls `loss` per micro-batch and divides the returned *sum*
by that global count before backward. So accumulation and data parallelism never change the
gradient, whatever the objective. The default is `causal_lm`, the next-token loss of
`model(**batch)`; a preference objective brings its own batch shape and reference model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tune.contract.collectives import Collectives
from tune.data.examples import IGNORE, collate

Batch = dict[str, Any]
Metric = float | tuple[float, float]


@dataclass
class LossOutput:
    """One micro-batch's result.

    `loss`: a scalar tensor, the SUM of the loss over this micro-batch's units (the core
    normalizes). `metrics`: extra values to log. A float is a sum over the same units as
    `count`, reported as sum / global count; a `(sum, n)` pair is reported as its own mean,
    summed over micro-batches and ranks first.
    """

    loss: Any
    metrics: dict[str, Metric] = field(default_factory=dict)


@dataclass
class RunData:
    """What `Objective.prepare` gets before the first step: the run's examples and the means to
    run them on this rank (e.g. to precompute reference values once).

    `train` / `eval` are every rank's examples (the same lists the loop batches: values an
    objective stores in an example dict reach its `collate`); `train` is empty when the data
    streams (`streaming`). `collectives` reduces over ranks: call it the same number of times
    on every rank. `autocast()` is the strategy's precision context, as around `loss`.
    """

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    micro_batch_size: int
    pad_id: int
    device: str
    rank: int = 0
    world_size: int = 1
    streaming: bool = False
    collectives: Collectives = field(default_factory=Collectives)
    precision: Callable[[], Any] = contextlib.nullcontext
    # The run's tokenizer (as the data format had it): an online objective decodes what it
    # generates. None where the caller has none to give.
    tokenizer: Any = None

    def autocast(self) -> Any:
        return self.precision()

    def shard(
        self, examples: list[dict[str, Any]], objective: Objective, batch_size: int = 0
    ) -> Iterator[tuple[list[int], Batch]]:
        """This rank's share of `examples` (indices rank, rank + world_size, ...) as collated
        micro-batches on the device: `(indices, batch)`. Every rank yields as many batches, the
        short ones padding with batches of `empty_like` examples (indices `[]`), so a forward
        per batch keeps ranks in lockstep (ZeRO-3 gathers parameters collectively)."""
        size = batch_size or self.micro_batch_size
        mine = list(range(self.rank, len(examples), self.world_size))
        n_batches = math.ceil(math.ceil(len(examples) / self.world_size) / size) if examples else 0
        for b in range(n_batches):
            idx = mine[b * size : (b + 1) * size]
            rows = [examples[i] for i in idx] or [objective.empty_like(examples[0])]
            batch = objective.collate(rows, self.pad_id)
            yield idx, {k: v.to(self.device) for k, v in batch.items()}


class Objective:
    """Base class of objectives: the causal-LM behaviour, hooks to override.

    `settings` are the validated `[objective]` keys; `ctx` is the run context.
    """

    unit = "tokens"  # what `count` counts, for messages

    def __init__(self, settings: Any = None, ctx: Any = None):
        self.settings = settings
        self.ctx = ctx

    def prepare(self, model: Any, run: RunData) -> None:
        """Once before training, after the strategy prepared the model (as the loop will call
        it), with the run's examples and the means to batch them on this rank: e.g. keep a
        frozen reference, or precompute reference values. Default: nothing."""

    @property
    def collectives(self) -> Collectives:
        """The run's reductions over ranks (`ctx.collectives`). Inside `loss`, call them on
        every rank for every micro-batch, the same number of times: e.g. a statistic pooled
        over the global batch."""
        return getattr(self.ctx, "collectives", None) or Collectives()

    def length(self, example: dict[str, Any]) -> int:
        """Tokens an example occupies in a micro-batch (for batching and packing)."""
        return len(example["input_ids"])

    def make_step(self, model: Any, batches: list[Batch]) -> list[Batch]:
        """Once per optimizer step, before `count`: the step's micro-batches (collated, on CPU)
        in, the batches `count` and `loss` will see out. Online objectives (RL, on-policy
        distillation) generate their data from `model` here, so the step is normalized by the
        units of what was generated. Called on every rank, in lockstep (generation under ZeRO-3
        gathers parameters collectively). Default: the batches unchanged."""
        return batches

    def collate(self, examples: list[dict[str, Any]], pad_id: int) -> Batch:
        """A padded micro-batch of examples (tensors on CPU; the core moves them)."""
        return collate(examples, pad_id)

    def collate_packed(self, rows: list[list[dict[str, Any]]], pad_id: int) -> Batch:
        """A packed micro-batch: each row holds whole examples end to end."""
        from tune.data.batching import collate_packed

        return collate_packed(rows, pad_id)

    def empty_like(self, example: dict[str, Any]) -> dict[str, Any]:
        """An example that counts for nothing: pads a rank's eval share to equal batch counts."""
        return {"input_ids": example["input_ids"], "labels": [IGNORE] * len(example["labels"])}

    def positions(self, batch: Batch) -> int:
        """Token positions this micro-batch computes, padding included (for the efficiency
        figure of the summary)."""
        return batch["input_ids"].numel()

    def count(self, batch: Batch) -> int:
        """The units this micro-batch's loss sums over (target tokens for causal LM)."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss(self, model: Any, batch: Batch) -> LossOutput:
        """The summed loss of one micro-batch, under the strategy's autocast."""
        # use_cache=False: no KV cache in training; with a cache transformers would not detect
        # packed rows (position ids restarting) and would let packed examples attend to each
        # other. num_items_in_batch=1: the model returns the summed token loss.
        out = model(**batch, use_cache=False, num_items_in_batch=1)
        return LossOutput(out.loss)
