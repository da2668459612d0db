"""Eval points: this rank's share of the eval examples (`EvalData`), every requested metric, and
early stopping on eval_loss."""

from __future__ import annotations

import math
from typing import Any

from tune.contract.evaluation import EvalData


def eval_data(session: Any) -> EvalData:
    """This rank's share of the eval examples, padded so every rank runs as many batches."""
    world, recipe = session.ctx.world, session.recipe
    examples = session.examples.eval
    size = recipe.eval.batch_size or recipe.train.micro_batch_size
    per_rank = math.ceil(len(examples) / (world.world_size * size)) * size
    mine = examples[world.rank :: world.world_size]
    blank = session.objective.empty_like(examples[0])
    mine = mine + [blank] * (per_rank - len(mine))
    strategy, ctx = session.strategy, session.ctx
    return EvalData(
        examples=mine,
        batch_size=size,
        pad_id=session.pad_id,
        device=world.device,
        max_batches=recipe.eval.max_batches,
        tokenizer=session.tokenizer,
        objective=session.objective,
        collectives=ctx.collectives,
        precision=lambda: strategy.autocast(ctx),
        world_size=world.world_size,
        lockstep=recipe.selected("strategy").capabilities.shards_parameters,
    )


def evaluate(pm: Any, metrics: dict[str, Any], model: Any, data: EvalData, ctx: Any) -> dict:
    """Every requested metric on `model` (put in eval mode for the call)."""
    if not metrics:
        return {}
    was_training = model.training
    model.eval()
    try:
        return pm.evaluate(metrics, model, data, ctx)
    finally:
        model.train(was_training)


def evaluate_session(session: Any, step: int) -> dict[str, float]:
    """The run's metrics at `step`, logged to the trackers and shown."""
    metrics = session.recipe.backends["metrics"]
    if not metrics or not session.examples.eval:
        return {}
    ctx = session.ctx
    results = evaluate(session.pm, metrics, session.base_model, eval_data(session), ctx)
    ctx.metrics.log("eval", step, results)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in results.items())
    ctx.print(f"eval @ step {step}: {shown}")
    return results


def should_stop(cfg: Any, state: Any, results: dict[str, float]) -> bool:
    """Early stopping on eval_loss: True after `patience` evals without improvement."""
    value = results.get("eval_loss")
    if value is None or not cfg.early_stopping_patience:
        return False
    if state.best_eval is None or value < state.best_eval - cfg.early_stopping_threshold:
        state.best_eval, state.bad_evals = value, 0
    else:
        state.bad_evals += 1
    return state.bad_evals >= cfg.early_stopping_patience
