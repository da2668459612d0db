"""The training loop: micro-batches in, optimizer steps out, checkpoints, the final save.

Loss normalization: the objective returns each micro-batch's summed loss; the core divides it by
the units (target tokens, pairs, ...) of the whole optimizer step, counted over all accumulated
micro-batches and all ranks, so the gradient does not depend on how the batch is split.

Sequence parallelism (`[strategy] sequence_parallel = N`): the ranks of a group share their
examples; each keeps a slice of every micro-batch (labels shifted before slicing, so `count`
counts each target once in the group) and sums the loss of its slice's targets. The global
count and the strategies' gradient average over all world ranks then give one process's
gradient: the sum over ranks of d(slice loss) is d(whole loss), as attention's all-to-all
carries each rank's share of every other rank's gradient back in backward.

Signals (SIGTERM, the first Ctrl-C) are honoured from the first step to the end of the final
save: during training the step finishes and a checkpoint is written; during the final save the
save finishes (final/ is whole) and the run stops before the closing eval and samples.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

from tune.errors import TuneError
from tune.train import evaluation, report
from tune.train.checkpoints import final as finals
from tune.train.checkpoints import save as checkpoints
from tune.train.meter import Meter
from tune.train.session import RunSession
from tune.train.setup import activation_offload
from tune.train.signals import EXIT_ABORTED, EXIT_STOPPED, RunStopped, StopRequest
from tune.train.state import LoopState


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None
    tokens: int  # real tokens of this rank's micro-batches
    slots: int  # token positions computed, padding included
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Progress:
    """What one session of the loop measured (a resumed run counts only its own)."""

    meter: Meter
    losses: list[tuple[int, float]] = field(default_factory=list)
    slots: int = 0
    stopped_early: bool = False


def train(session: RunSession, state: LoopState, run_dir: Any, resumed: bool) -> dict[str, Any]:
    """Train from `state` to the end, save final/, evaluate, sample; returns the summary."""
    ctx, cfg = session.ctx, session.recipe.train
    total = session.plan.total_steps
    report.announce(session)
    progress = Progress(Meter(ctx.world.device))
    last_saved = state.step if resumed else -1
    bar = report.progress_bar(ctx)
    task = bar.add_task("train", total=total, completed=state.step, info="")
    with bar, StopRequest(say=ctx.print) as stop:
        while state.step < total:
            try:
                result = _step_guarded(session, state)
            except KeyboardInterrupt:
                _aborted(session, state)
            _advance(state, progress, result)
            step = state.step
            if step % cfg.log_every == 0 or step == total:
                _log(session, state, progress, result, bar, task)
            bar.update(task, completed=step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                results = evaluation.evaluate_session(session, step)
                progress.stopped_early = evaluation.should_stop(cfg, state, results)
            every = session.recipe.generate.every
            if every and step % every == 0 and step < total:
                report.sample(session, step, final=False)
            if cfg.save_every and step % cfg.save_every == 0:
                _save(session, state, run_dir)
                last_saved = step
            if _stop_agreed(session, stop):
                _stop(session, state, stop, run_dir, saved=last_saved == step)
            if progress.stopped_early:
                ctx.print(
                    f"early stopping at step {step}: no eval_loss improvement in "
                    f"{cfg.early_stopping_patience} evals"
                )
                break
        if cfg.save_every and last_saved != state.step:
            _save(session, state, run_dir)
        wall = progress.meter.elapsed
        finals.save_final(session, run_dir)
        if _stop_agreed(session, stop):
            raise RunStopped(
                f"stopped on {stop.requested or 'a signal to another rank'} after the last step: "
                f"final/ is written ({ctx.output_dir / 'final'}); the closing eval and samples "
                "were skipped.",
                EXIT_STOPPED,
            )
    final_metrics = (
        evaluation.evaluate_session(session, state.step) if session.examples.eval else {}
    )
    samples = report.sample(session, state.step, final=True)
    summary = report.summarize(session, state, progress, wall, final_metrics, samples, run_dir)
    ctx.metrics.end(summary)
    return summary


def _advance(state: LoopState, progress: Progress, result: StepResult) -> None:
    state.step += 1
    state.tokens += result.tokens
    if state.first_loss is None:
        state.first_loss = result.loss
    state.last_loss = result.loss
    progress.meter.add(result.tokens)
    progress.slots += result.slots
    progress.losses.append((state.step, result.loss))


def _log(session, state, progress, result, bar, task) -> None:
    ctx = session.ctx
    lr = session.scheduler.get_last_lr()[0]
    rate = ctx.collectives.all_reduce_sum(progress.meter.window_rate())
    record = {
        "loss": round(result.loss, 6),
        "lr": lr,
        "grad_norm": result.grad_norm,
        "tokens_per_s": round(rate, 1),
        "epoch": state.epoch,
        **result.metrics,
    }
    ctx.metrics.log("train", state.step, record)
    info = f"loss {result.loss:.4f}  lr {lr:.2e}  {rate:,.0f} tok/s"
    bar.update(task, info=info)
    if not ctx.console.is_terminal:
        ctx.print(f"step {state.step}/{session.plan.total_steps}  {info}")


def _step_guarded(session: RunSession, state: LoopState) -> StepResult:
    """One step; a bug in a plugin keeps its traceback, but the user learns what survived."""
    try:
        return train_step(session, session.batches.next_group(state))
    except (KeyboardInterrupt, TuneError, RunStopped):
        raise
    except Exception:
        session.ctx.print(
            f"[red]step {state.step + 1} failed[/red] (traceback below); " + _kept(session) + ".",
            markup=True,
        )
        raise


def train_step(session: RunSession, group: list[list[Any]]) -> StepResult:
    import torch

    strategy, ctx, objective = session.strategy, session.ctx, session.objective
    reduce = ctx.collectives.all_reduce_sum
    batches, examples = session.batches.collate(group)
    batches = objective.make_step(session.model, batches)
    tokens = sum(objective.length(e) for e in examples)
    sp = session.sequence_parallel
    layouts: list[Any] = [None] * len(batches)
    if sp is not None:  # this rank's slice of every sequence (tune.train.sequence_parallel)
        batches, layouts = map(list, zip(*(sp.shard(b) for b in batches), strict=True))
        tokens //= sp.size  # the group shares its examples: each rank counts its share
    n_global = reduce(sum(objective.count(b) for b in batches))
    denom = max(n_global, 1) / ctx.world.world_size
    session.model.train()
    loss_sum = torch.zeros((), device=ctx.world.device)
    metric_sums: dict[str, list[float]] = {}
    slots = 0
    for j, batch in enumerate(batches):
        slots += objective.positions(batch)
        batch = {k: v.to(ctx.world.device) for k, v in batch.items()}
        sliced = sp.active(layouts[j]) if sp is not None else contextlib.nullcontext()
        with strategy.accumulate(session.model, is_last=j == len(batches) - 1), sliced:
            with strategy.autocast(ctx), activation_offload(session.recipe, ctx.world.device):
                out = objective.loss(session.model, batch)
            loss = out.loss / denom
            strategy.backward(loss, session.model)
        loss_sum += loss.detach().float()
        for key, value in out.metrics.items():
            total, n = value if isinstance(value, tuple) else (value, None)
            sums = metric_sums.setdefault(key, [0.0, 0.0, n is None])
            sums[0] += float(total)
            sums[1] += float(n or 0)
    grad_norm = strategy.step(session.model, session.optimizer, session.recipe.train.max_grad_norm)
    session.scheduler.step()
    loss = reduce(float(loss_sum)) / ctx.world.world_size
    if not math.isfinite(loss):
        raise _diverged(session, loss)
    extra = {}
    for key in sorted(metric_sums):  # same keys, same order on every rank
        total, n, per_unit = metric_sums[key]
        divisor = n_global if per_unit else reduce(n)
        extra[key] = reduce(total) / max(divisor, 1e-12)
    return StepResult(loss, grad_norm, tokens, slots, extra)


def _diverged(session: RunSession, loss: float) -> TuneError:
    """A non-finite loss: one paragraph naming the objective, what survived and how to go on."""
    objective = session.recipe.selected("objective").backend
    source = (
        f"objective '{objective.name}'"
        if objective.plugin == "causal_lm"
        else f"objective '{objective.name}' (plugin '{objective.plugin}')"
    )
    return TuneError(
        f"the loss became {loss} in this step: training diverged or {source} returned a "
        f"non-finite loss. {_kept(session)}.",
        where=f"{session.recipe.path}: [optimizer] lr",
        fix="lower [optimizer] lr (or raise [scheduler] warmup), check the data for empty or "
        "broken examples, or check the objective's loss; then resume or start again.",
    )


def _kept(session: RunSession) -> str:
    found = checkpoints.list_checkpoints(session.ctx.output_dir)
    if found:
        return (
            f"the last checkpoint ({found[-1]}) is intact; continue with: {session.resume_command}"
        )
    return "no checkpoint was written yet"


def _save(session: RunSession, state: LoopState, run_dir: Any) -> None:
    ctx = session.ctx
    if ctx.world.is_main and run_dir is not None:
        run_dir.claim("checkpoints")
    state.micro_per_epoch = session.batches.plan.micro_per_epoch
    state.trackers = ctx.metrics.states()
    path = checkpoints.save(session, state, keep_last=session.recipe.train.keep_last)
    ctx.metrics.checkpoint(state.step, path)


def _stop_agreed(session: RunSession, stop: StopRequest) -> bool:
    """Every rank stops at the same step when any one got the signal."""
    flag = 1.0 if stop.requested else 0.0
    if session.ctx.world.world_size > 1:
        flag = session.ctx.collectives.all_reduce_sum(flag)
    return flag > 0


def _stop(session, state: LoopState, stop: StopRequest, run_dir: Any, saved: bool) -> None:
    path = checkpoints.checkpoints_dir(session.ctx.output_dir) / f"step-{state.step}"
    if not saved:
        _save(session, state, run_dir)
    raise RunStopped(
        f"stopped at step {state.step} on {stop.requested or 'a signal to another rank'}; "
        f"checkpoint {path} is written. Continue with: {session.resume_command}",
        EXIT_STOPPED,
    )


def _aborted(session: RunSession, state: LoopState) -> None:
    raise RunStopped(f"aborted during step {state.step + 1}: {_kept(session)}", EXIT_ABORTED)
