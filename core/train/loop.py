"""The training loop: micro-batches in, optimizer steps out, checkpoints, final save, samples.

Loss normalization: the objective returns each micro-batch's summed loss; the core divides it by
the units (target tokens, pairs, ...) of the whole optimizer step, counted over all accumulated
micro-batches and all ranks, so the gradient does not depend on how the batch is split.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from tune.contract.context import RunContext
from tune.contract.tracker import RunInfo
from tune.data.batching import Batcher
from tune.recipe import Recipe, dump_toml
from tune.train import checkpoint, evaluation, report, setup
from tune.train import resume as resuming
from tune.train.meter import Meter
from tune.train.outdir import OutputDir
from tune.train.signals import EXIT_ABORTED, EXIT_STOPPED, RunStopped, StopRequest


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        pm,
        ctx: RunContext,
        strategy,
        output: OutputDir | None = None,
        resume_command: str | None = None,
    ):
        self.recipe, self.pm, self.ctx, self.strategy = recipe, pm, ctx, strategy
        self.train_cfg = recipe.train
        self.recipe_text = dump_toml(recipe.resolved())
        self.output = output or OutputDir(ctx.output_dir, f"{recipe.path}: [train] output_dir")
        self.resume_command = resume_command or f"tune run {recipe.path} --resume"
        self.resumed_step: int | None = None

    # -- set-up --------------------------------------------------------------------------------
    def build(self) -> None:
        from transformers import set_seed
        from tune.data.pipeline import load_examples
        from tune.data.templates import end_of_turn_ids

        recipe, pm, ctx = self.recipe, self.pm, self.ctx
        set_seed(recipe.train.seed)
        if ctx.world.is_main:
            ctx.output_dir.mkdir(parents=True, exist_ok=True)
            (ctx.output_dir / "recipe.toml").write_text(self.recipe_text, encoding="utf-8")
        model, tokenizer = setup.build_model(pm, recipe, ctx)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.examples = load_examples(pm, tokenizer, ctx)
        end_of_turn_ids(model, tokenizer)  # samples during training stop at a named template's eos
        self.objective = pm.call("tune_build_objective", recipe.selected("objective"), ctx=ctx)
        data, world, length = recipe.data, ctx.world, self.objective.length
        self.reader = None
        if self.examples.stream is not None:
            import dataclasses

            from tune.data.stream import StreamReader

            self.reader = StreamReader(
                dataclasses.replace(self.examples.stream, length=length),
                micro_batch_size=recipe.train.micro_batch_size,
                max_seq_len=recipe.model.max_seq_len,
                pack=data.pack,
                rank=world.rank,
                world_size=world.world_size,
            )
        self.batcher = Batcher(
            lengths=[length(e) for e in self.examples.train],
            micro_batch_size=recipe.train.micro_batch_size,
            max_seq_len=recipe.model.max_seq_len,
            seed=recipe.train.seed,
            shuffle=data.shuffle,
            pack=data.pack,
            group_by_length=data.group_by_length,
            rank=world.rank,
            world_size=world.world_size,
        )
        self.n_trainable, self.n_total = setup.count_parameters(pm, recipe, model)
        opt_sel = recipe.selected("optimizer")
        groups = setup.param_groups(model, getattr(opt_sel.settings, "weight_decay", 0.0))
        optimizer = pm.call("tune_build_optimizer", opt_sel, params=groups, ctx=ctx)
        self.plan_steps()
        self.scheduler = setup.build_scheduler(recipe, optimizer, self.total_steps)
        self.model, self.optimizer = self.strategy.prepare(model, optimizer, ctx)
        self.objective.begin(self.model, ctx, self)

    def plan_steps(self) -> None:
        cfg = self.train_cfg
        if self.reader is not None:  # unknown length: max_steps is required for streaming
            self.micro_per_epoch = self.steps_per_epoch = 0
            self.total_steps = cfg.max_steps
            return
        self.micro_per_epoch = len(self.batcher.epoch(0))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        if cfg.max_steps > 0:
            self.total_steps = cfg.max_steps
        else:  # packed epochs differ slightly in bin count: count each one
            per_epoch = [
                math.ceil(len(self.batcher.epoch(e)) / cfg.grad_accum) for e in range(cfg.epochs)
            ]
            self.total_steps = sum(per_epoch)

    # -- the loop ------------------------------------------------------------------------------
    def run(
        self, resume: bool, resume_from: Path | None, resume_changed: bool = False
    ) -> dict[str, Any]:
        ctx, cfg = self.ctx, self.train_cfg
        # Before anything loads or is written: which checkpoint, and is it still this run?
        self.settings = resuming.run_settings(self.pm, ctx)
        plan = None
        if resume:
            plan = resuming.plan(self.pm, ctx, resume_from, resume_changed, self.settings)
            if plan.changes:
                self.recipe_text = (
                    f"# resumed from {plan.path} with --resume-changed: "
                    f"{resuming.manifest.format_changes(plan.changes)}\n" + self.recipe_text
                )
        self.build()
        state: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "micro_in_epoch": 0,
            "tokens": 0,
            "best_eval": None,
            "bad_evals": 0,
        }
        if plan is not None and plan.path is not None:
            self._resume(state, plan)
        ctx.metrics.start(
            RunInfo(
                recipe=self.recipe.resolved(),
                output_dir=ctx.output_dir,
                name=ctx.output_dir.resolve().name,
                step=state["step"],
                resumed=resume,
            ),
            state.pop("trackers", {}),
        )
        report.announce(self)
        meter = Meter(ctx.world.device)
        self.slots = 0  # token positions computed, padding included
        self.losses: list[tuple[int, float]] = []
        stopped_early = False
        progress = report.progress(ctx)
        task = progress.add_task("train", total=self.total_steps, completed=state["step"], info="")
        last_saved = state["step"] if self.resumed_step is not None else -1
        with progress, StopRequest(say=ctx.print) as stop:
            while state["step"] < self.total_steps:
                try:
                    loss, grad_norm, tokens, extra = self._train_step(self._next_group(state))
                except KeyboardInterrupt:
                    self._aborted(state)
                state["step"] += 1
                state["tokens"] += tokens
                state.setdefault("first_loss", loss)
                state["last_loss"] = loss
                meter.add(tokens)
                step = state["step"]
                self.losses.append((step, loss))
                if step % cfg.log_every == 0 or step == self.total_steps:
                    lr = self.scheduler.get_last_lr()[0]
                    rate = self.strategy.all_reduce_sum(meter.window_rate())
                    record = {
                        "loss": round(loss, 6),
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_s": round(rate, 1),
                        "epoch": state["epoch"],
                        **extra,
                    }
                    ctx.metrics.log("train", step, record)
                    info = f"loss {loss:.4f}  lr {lr:.2e}  {rate:,.0f} tok/s"
                    progress.update(task, info=info)
                    if not ctx.console.is_terminal:
                        ctx.print(f"step {step}/{self.total_steps}  {info}")
                progress.update(task, completed=step)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                    results = evaluation.evaluate(self, step)
                    stopped_early = evaluation.should_stop(self, state, results)
                every = self.recipe.generate.every
                if every and step % every == 0 and step < self.total_steps:
                    self._sample(step, final=False)
                if cfg.save_every and step % cfg.save_every == 0:
                    self._save(state)
                    last_saved = step
                if self._stop_agreed(stop):
                    self._stop(state, stop, saved=last_saved == step)
                if stopped_early:
                    ctx.print(
                        f"early stopping at step {step}: no eval_loss improvement in "
                        f"{cfg.early_stopping_patience} evals"
                    )
                    break
        if cfg.save_every and last_saved != state["step"]:
            self._save(state)
        wall = meter.elapsed
        self._save_final()
        final_metrics = evaluation.evaluate(self, state["step"]) if self.examples.eval else {}
        samples = self._sample(state["step"])
        summary = report.summarize(self, state, meter, wall, final_metrics, samples, stopped_early)
        ctx.metrics.end(summary)
        return summary

    def _resume(self, state: dict[str, Any], plan: resuming.ResumePlan) -> None:
        """Restore the checkpoint; with accepted changes, the new recipe's optimizer settings
        and schedule replace the saved ones from this step on."""
        import warnings

        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        state.update(
            checkpoint.load(
                Path(plan.path),
                strategy=self.strategy,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                ctx=self.ctx,
                load_scheduler=not plan.changes,
            )
        )
        rank_state = state.pop("rank_state", {})
        if self.reader is not None:
            self.reader.load_state_dict(rank_state["stream"])
        self.resumed_step = state["step"]
        if plan.changes:
            for group, values in zip(self.optimizer.param_groups, fresh, strict=True):
                group.update(values)
            with warnings.catch_warnings():  # replaying the schedule, no optimizer steps
                warnings.simplefilter("ignore")
                for _ in range(state["step"]):
                    self.scheduler.step()
            old = state.get("micro_per_epoch")
            if self.reader is None and old and old != self.micro_per_epoch:  # same epoch share
                share = state["micro_in_epoch"] / old
                state["micro_in_epoch"] = min(
                    round(share * self.micro_per_epoch), self.micro_per_epoch - 1
                )
            self.ctx.print(
                "[yellow]resuming with changed settings:[/yellow] "
                + resuming.manifest.format_changes(plan.changes)
            )
        self.ctx.print(f"resumed from {plan.path} at step {state['step']}")

    def _stop_agreed(self, stop: StopRequest) -> bool:
        """Every rank stops at the same step when any one got the signal."""
        flag = 1.0 if stop.requested else 0.0
        if self.ctx.world.world_size > 1:
            flag = self.strategy.all_reduce_sum(flag)
        return flag > 0

    def _stop(self, state: dict[str, Any], stop: StopRequest, saved: bool) -> None:
        path = checkpoint.checkpoints_dir(self.ctx.output_dir) / f"step-{state['step']}"
        if not saved:
            self._save(state)
        raise RunStopped(
            f"stopped at step {state['step']} on {stop.requested or 'a signal to another rank'}; "
            f"checkpoint {path} is written. Continue with: {self.resume_command}",
            EXIT_STOPPED,
        )

    def _aborted(self, state: dict[str, Any]) -> None:
        found = checkpoint.list_checkpoints(self.ctx.output_dir)
        kept = (
            f"the last checkpoint ({found[-1]}) is intact; continue with: {self.resume_command}"
            if found
            else "no checkpoint was written yet"
        )
        raise RunStopped(f"aborted during step {state['step'] + 1}: {kept}", EXIT_ABORTED)

    def _next_group(self, state: dict[str, Any]) -> list[list[Any]]:
        """The next optimizer step's micro-batches (a short last group ends an epoch)."""
        accum = self.train_cfg.grad_accum
        if self.reader is not None:
            group = [self.reader.next_micro_batch() for _ in range(accum)]
            state["epoch"] = self.reader.epoch
            return group
        train = self.examples.train
        while True:
            plan = self.batcher.epoch(state["epoch"])
            start = state["micro_in_epoch"]
            group = plan[start : start + accum]
            if group:
                state["micro_in_epoch"] = start + len(group)
                if state["micro_in_epoch"] >= len(plan):
                    state["epoch"] += 1
                    state["micro_in_epoch"] = 0
                if self.batcher.pack:  # micro-batch -> rows (bins) -> example indices
                    return [[[train[i] for i in row] for row in batch] for batch in group]
                return [[train[i] for i in idx] for idx in group]
            state["epoch"] += 1
            state["micro_in_epoch"] = 0

    def _train_step(self, group: list[list[Any]]) -> tuple[float, float | None, int, dict]:
        import torch

        strategy, ctx, objective = self.strategy, self.ctx, self.objective
        if self.batcher.pack:
            batches = [objective.collate_packed(rows, self.pad_id) for rows in group]
            examples = [e for rows in group for row in rows for e in row]
        else:
            batches = [objective.collate(examples, self.pad_id) for examples in group]
            examples = [e for micro in group for e in micro]
        tokens = sum(objective.length(e) for e in examples)
        n_global = strategy.all_reduce_sum(sum(objective.count(b) for b in batches))
        denom = max(n_global, 1) / ctx.world.world_size
        self.model.train()
        loss_sum = torch.zeros((), device=ctx.world.device)
        metric_sums: dict[str, list[float]] = {}
        for j, batch in enumerate(batches):
            self.slots += objective.positions(batch)
            batch = {k: v.to(ctx.world.device) for k, v in batch.items()}
            with strategy.accumulate(self.model, is_last=j == len(batches) - 1):
                with strategy.autocast(ctx):
                    out = objective.loss(self.model, batch)
                loss = out.loss / denom
                strategy.backward(loss, self.model)
            loss_sum += loss.detach().float()
            for key, value in out.metrics.items():
                total, n = value if isinstance(value, tuple) else (value, None)
                sums = metric_sums.setdefault(key, [0.0, 0.0, n is None])
                sums[0] += float(total)
                sums[1] += float(n or 0)
        grad_norm = strategy.step(self.model, self.optimizer, self.train_cfg.max_grad_norm)
        self.scheduler.step()
        loss = strategy.all_reduce_sum(float(loss_sum)) / ctx.world.world_size
        if not math.isfinite(loss):
            raise RuntimeError(f"loss is {loss}: training diverged (try a lower [optimizer] lr)")
        extra = {}
        for key in sorted(metric_sums):  # same keys, same order on every rank
            total, n, per_unit = metric_sums[key]
            divisor = n_global if per_unit else strategy.all_reduce_sum(n)
            extra[key] = strategy.all_reduce_sum(total) / max(divisor, 1e-12)
        return loss, grad_norm, tokens, extra

    # -- saving and sampling -------------------------------------------------------------------
    def _save(self, state: dict[str, Any]) -> None:
        path = checkpoint.save(
            strategy=self.strategy,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state={
                **state,
                "micro_per_epoch": self.micro_per_epoch,
                "trackers": self.ctx.metrics.states(),
            },
            rank_state={"stream": self.reader.state_dict()} if self.reader else {},
            recipe_text=self.recipe_text,
            ctx=self.ctx,
            keep_last=self.train_cfg.keep_last,
            settings=self.settings,
        )
        self.ctx.metrics.checkpoint(state["step"], path)

    def _save_final(self) -> None:
        out, ctx, strategy = self.ctx.output_dir, self.ctx, self.strategy
        tmp, final = out / ".tmp-final", out / "final"
        try:
            if ctx.world.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            strategy.barrier()
            strategy.save_final(self.model, self.tokenizer, tmp, ctx)
            if ctx.world.is_main:
                self.pm.hook.tune_save_extras(model=strategy.unwrap(self.model), path=tmp, ctx=ctx)
            strategy.barrier()
            if ctx.world.is_main:
                (tmp / "recipe.toml").write_text(self.recipe_text, encoding="utf-8")
                self.output.clear_final()
                os.replace(tmp, final)
                self.output.record_final()
        except Exception as exc:
            if not checkpoint.is_write_failure(exc):
                raise
            if ctx.world.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise checkpoint.write_failed(exc, "final model", final, ctx) from None
        strategy.barrier()

    def _sample(self, step: int, final: bool = True) -> list[dict[str, str]]:
        from tune.train.samples import sample

        return sample(self, step, final)
