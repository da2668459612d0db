"""`Objective`: what an objective plugin returns from `tune_build_objective`. The loss of a step.

The core plans micro-batches, asks the objective to collate them, counts the units the step's
loss is normalized by (`count`: target tokens, pairs, sequences) over every micro-batch of the
optimizer step and every rank, then calls `loss` per micro-batch and divides the returned *sum*
by that global count before backward. So accumulation and data parallelism never change the
gradient, whatever the objective. The default is `causal_lm`, the next-token loss of
`model(**batch)`; a preference objective brings its own batch shape and reference model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


class Objective:
    """Base class of objectives: the causal-LM behaviour, hooks to override.

    `settings` are the validated `[objective]` keys; `ctx` is the run context.
    """

    unit = "tokens"  # what `count` counts, for messages

    def __init__(self, settings: Any = None, ctx: Any = None):
        self.settings = settings
        self.ctx = ctx

    def setup(self, model: Any, ctx: Any) -> None:
        """Called once after the strategy prepared the model (as the loop will call it), before
        training: e.g. keep a frozen reference model, or precompute reference values."""

    def length(self, example: dict[str, Any]) -> int:
        """Tokens an example occupies in a micro-batch (for batching and packing)."""
        return len(example["input_ids"])

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
