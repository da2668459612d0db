"""Evaluation: what metric plugins receive (`EvalData`), eval points and early stopping."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tune.contract.context import RunContext


@dataclass
class EvalData:
    """What `tune_evaluate` gets: this rank's eval examples and the means to run them.

    `batches()` yields collated micro-batches already on `device` (collated by the run's
    objective); `autocast()` is the strategy's precision context; `reduce_sum(x)` sums a
    number over ranks (call it the same number of times on every rank). Every rank holds the
    same number of examples: the last ones may be padding rows with no targets.
    """

    examples: list[dict[str, Any]]
    batch_size: int
    pad_id: int
    device: str
    max_batches: int
    strategy: Any
    ctx: RunContext
    tokenizer: Any = None
    objective: Any = None

    def batches(self):
        for i in range(0, len(self.examples), self.batch_size):
            if self.max_batches and i // self.batch_size >= self.max_batches:
                return
            batch = self.objective.collate(self.examples[i : i + self.batch_size], self.pad_id)
            yield {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self):
        return self.strategy.autocast(self.ctx)

    def reduce_sum(self, value: float) -> float:
        return self.strategy.all_reduce_sum(value)


def eval_data(trainer: Any) -> EvalData:
    """This rank's share of the eval examples, padded so every rank runs as many batches."""
    world = trainer.ctx.world
    examples = trainer.examples.eval
    size = trainer.recipe.eval.batch_size or trainer.recipe.train.micro_batch_size
    per_rank = math.ceil(len(examples) / (world.world_size * size)) * size
    mine = examples[world.rank :: world.world_size]
    blank = trainer.objective.empty_like(examples[0])
    mine = mine + [blank] * (per_rank - len(mine))
    return EvalData(
        examples=mine,
        batch_size=size,
        pad_id=trainer.pad_id,
        device=world.device,
        max_batches=trainer.recipe.eval.max_batches,
        strategy=trainer.strategy,
        ctx=trainer.ctx,
        tokenizer=trainer.tokenizer,
        objective=trainer.objective,
    )


def evaluate(trainer: Any, step: int) -> dict[str, float]:
    """Every requested metric at `step`, logged to the trackers and shown."""
    metrics = trainer.recipe.backends["metrics"]
    if not metrics or not trainer.examples.eval:
        return {}
    model = trainer.strategy.unwrap(trainer.model)
    was_training = model.training
    model.eval()
    try:
        results = trainer.pm.evaluate(metrics, model, eval_data(trainer), trainer.ctx)
    finally:
        model.train(was_training)
    trainer.ctx.metrics.log("eval", step, results)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in results.items())
    trainer.ctx.print(f"eval @ step {step}: {shown}")
    return results


def should_stop(trainer: Any, state: dict[str, Any], results: dict[str, float]) -> bool:
    """Early stopping on eval_loss: True after `patience` evals without improvement."""
    cfg = trainer.recipe.train
    value = results.get("eval_loss")
    if value is None or not cfg.early_stopping_patience:
        return False
    best = state["best_eval"]
    if best is None or value < best - cfg.early_stopping_threshold:
        state["best_eval"], state["bad_evals"] = value, 0
    else:
        state["bad_evals"] += 1
    return state["bad_evals"] >= cfg.early_stopping_patience
