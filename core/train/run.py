"""`tune run`: strategy -> load -> adapt chain -> data -> optimizer -> loop -> save -> eval.

Loss normalization: every micro-batch's summed token loss is divided by the number of target
tokens in the whole optimizer step, counted over all accumulated micro-batches and all ranks,
so the gradient does not depend on how the batch is split.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.context import MetricsSink, RunContext
from tune.data.batching import Batcher, collate_packed
from tune.data.examples import IGNORE, collate
from tune.data.sources import format_all
from tune.errors import TuneError
from tune.recipe import Recipe, dump_toml
from tune.train import checkpoint
from tune.train.meter import Meter, human_bytes


def upcast_trainable(params: list[Any]) -> None:
    """Keep trainable weights in float32; autocast still computes in 16 bits.

    An optimizer step on bf16 weights rounds away any update below 1/256 of the weight (an
    Adam step of 1e-3 never moves a norm weight of 1.0), so a full fine-tune of a bf16-loaded
    model learns only the coarse part of what it should. Frozen weights stay as loaded.
    """
    import torch

    for param in params:
        if param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()


def _n_params(param) -> int:
    """Logical parameter count: packed 4-bit weights hold two values per stored byte."""
    if hasattr(param, "quant_state"):
        return param.numel() * 2 * param.element_size()
    return param.numel()


def call_backend(pm, hook: str, selected, **kwargs) -> Any:
    return pm.call(
        hook, selected.backend, name=selected.backend.name, settings=selected.settings, **kwargs
    )


def run_training(
    recipe: Recipe,
    pm,
    *,
    resume: bool = False,
    resume_from: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the whole recipe; returns the summary that is also written to summary.json."""
    pm.hook.tune_run_start(recipe=recipe)  # before anything imports torch or transformers
    output_dir = Path(recipe.train.output_dir)
    ctx = RunContext(recipe=recipe, output_dir=output_dir)
    strategy = call_backend(pm, "tune_choose_strategy", recipe.selected("strategy"), ctx=ctx)
    ctx.world = strategy.setup(ctx)
    _check_world(ctx)
    if not ctx.world.is_main:
        _quiet_libraries()
    try:
        _guard_output_dir(ctx, resume, overwrite)
        strategy.barrier()
        ctx.metrics = MetricsSink(output_dir / "metrics.jsonl", enabled=ctx.world.is_main)
        return Trainer(recipe, pm, ctx, strategy).run(resume, resume_from)
    finally:
        strategy.teardown()


def _check_world(ctx: RunContext) -> None:
    from tune.distributed import env_world

    started = env_world()
    if started is not None and started.world_size > 1 and ctx.world.world_size == 1:
        raise TuneError(
            f"this process was started as one of {started.world_size}, but [strategy] name = "
            f"'{ctx.recipe.strategy.name}' runs a single process.",
            where=f"{ctx.recipe.path}: [strategy] name",
            fix='use name = "ddp" or "deepspeed" for multi-process runs.',
        )


def _quiet_libraries() -> None:
    """Only rank 0 talks: silence library warnings and progress bars on the other ranks."""
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _guard_output_dir(ctx: RunContext, resume: bool, overwrite: bool) -> None:
    """Never clobber a previous run by accident: saved work is not lost."""
    out = ctx.output_dir
    existing = [p for p in ("final", "checkpoints", "metrics.jsonl") if (out / p).exists()]
    if not existing or resume:
        return
    if not overwrite:
        raise TuneError(
            f"output_dir '{out}' already holds a run ({', '.join(existing)}).",
            where=f"{ctx.recipe.path}: [train] output_dir",
            fix="continue it with --resume, pick another directory with "
            "-o train.output_dir=..., or replace it with --overwrite.",
        )
    if ctx.world.is_main:
        for name in existing:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()


@dataclass
class EvalData:
    """What `tune_evaluate` gets: this rank's eval batches, autocast and a cross-rank sum."""

    examples: list[dict[str, list[int]]]
    batch_size: int
    pad_id: int
    device: str
    max_batches: int
    strategy: Any
    ctx: RunContext
    tokenizer: Any = None

    def batches(self):
        for i in range(0, len(self.examples), self.batch_size):
            if self.max_batches and i // self.batch_size >= self.max_batches:
                return
            batch = collate(self.examples[i : i + self.batch_size], self.pad_id)
            yield {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self):
        return self.strategy.autocast(self.ctx)

    def reduce_sum(self, value: float) -> float:
        return self.strategy.all_reduce_sum(value)


class Trainer:
    def __init__(self, recipe: Recipe, pm, ctx: RunContext, strategy):
        self.recipe, self.pm, self.ctx, self.strategy = recipe, pm, ctx, strategy
        self.train_cfg = recipe.train
        self.recipe_text = dump_toml(recipe.resolved())

    # -- set-up --------------------------------------------------------------------------------
    def build(self) -> None:
        from transformers import set_seed

        recipe, pm, ctx = self.recipe, self.pm, self.ctx
        set_seed(recipe.train.seed)
        if ctx.world.is_main:
            ctx.output_dir.mkdir(parents=True, exist_ok=True)
            (ctx.output_dir / "recipe.toml").write_text(self.recipe_text, encoding="utf-8")
        if "quantization" in recipe.backends:
            ctx.quantization_config = call_backend(
                pm, "tune_quantization_config", recipe.selected("quantization"), ctx=ctx
            )
        model, tokenizer = call_backend(pm, "tune_load_model", recipe.selected("loader"), ctx=ctx)
        if "quantization" in recipe.backends:
            model = call_backend(
                pm,
                "tune_prepare_quantized_model",
                recipe.selected("quantization"),
                model=model,
                ctx=ctx,
            )
        for selected in recipe.backends["adapt"]:
            model = call_backend(pm, "tune_adapt_model", selected, model=model, ctx=ctx)
        if ctx.keep_trainable:
            for name, param in model.named_parameters():
                if any(fragment in name for fragment in ctx.keep_trainable):
                    param.requires_grad_(True)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.examples = format_all(pm, tokenizer, ctx)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise TuneError(
                "the model has no trainable parameters after the [[adapt]] steps.",
                where=str(recipe.path),
                fix="check the adapt chain (e.g. only_train_* options) or remove quantize for "
                "full fine-tuning.",
            )
        if recipe.train.master_weights == "fp32":
            upcast_trainable([p for _, p in trainable])
        data, world = recipe.data, ctx.world
        self.reader = None
        if self.examples.stream is not None:
            from tune.data.stream import StreamReader

            self.reader = StreamReader(
                self.examples.stream,
                micro_batch_size=recipe.train.micro_batch_size,
                max_seq_len=recipe.model.max_seq_len,
                pack=data.pack,
                rank=world.rank,
                world_size=world.world_size,
            )
        self.batcher = Batcher(
            lengths=[len(e["input_ids"]) for e in self.examples.train],
            micro_batch_size=recipe.train.micro_batch_size,
            max_seq_len=recipe.model.max_seq_len,
            seed=recipe.train.seed,
            shuffle=data.shuffle,
            pack=data.pack,
            group_by_length=data.group_by_length,
            rank=world.rank,
            world_size=world.world_size,
        )
        self.n_trainable = sum(_n_params(p) for _, p in trainable)
        self.n_total = sum(_n_params(p) for p in model.parameters())
        decay = [p for _, p in trainable if p.ndim >= 2]
        no_decay = [p for _, p in trainable if p.ndim < 2]
        opt_sel = recipe.selected("optimizer")
        wd = getattr(opt_sel.settings, "weight_decay", 0.0)
        groups = [
            g
            for g in (
                {"params": decay, "weight_decay": wd},
                {"params": no_decay, "weight_decay": 0.0},
            )
            if g["params"]
        ]
        optimizer = call_backend(pm, "tune_build_optimizer", opt_sel, params=groups, ctx=ctx)
        self.plan_steps()
        self.scheduler = self.build_scheduler(optimizer)
        self.model, self.optimizer = self.strategy.prepare(model, optimizer, ctx)

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

    def build_scheduler(self, optimizer):
        from transformers import get_scheduler

        sch = self.recipe.scheduler
        warmup = sch.warmup_steps or int(round(sch.warmup_ratio * self.total_steps))
        extra = {"power": sch.power, "lr_end": sch.lr_end} if sch.name == "polynomial" else None
        return get_scheduler(
            sch.name,
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=self.total_steps,
            scheduler_specific_kwargs=extra,
        )

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool, resume_from: Path | None) -> dict[str, Any]:
        ctx, cfg = self.ctx, self.train_cfg
        self.build()
        state = {
            "step": 0,
            "epoch": 0,
            "micro_in_epoch": 0,
            "tokens": 0,
            "best_eval": None,
            "bad_evals": 0,
        }
        if resume:
            path = resume_from or self._latest_checkpoint()
            state.update(
                checkpoint.load(
                    Path(path),
                    strategy=self.strategy,
                    model=self.model,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    ctx=ctx,
                )
            )
            rank_state = state.pop("rank_state", {})
            if self.reader is not None:
                self.reader.load_state_dict(rank_state["stream"])
            ctx.print(f"resumed from {path} at step {state['step']}")
        self._announce(state)
        meter = Meter(ctx.world.device)
        self.slots = 0  # token positions computed, padding included
        self.losses: list[tuple[int, float]] = []
        stopped_early = False
        progress = self._progress()
        task = progress.add_task("train", total=self.total_steps, completed=state["step"], info="")
        last_saved = state["step"] if resume else -1
        with progress:
            while state["step"] < self.total_steps:
                group = self._next_group(state)
                loss, grad_norm, tokens = self._train_step(group)
                state["step"] += 1
                state["tokens"] += tokens
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
                    }
                    ctx.metrics.log("train", step, **record)
                    info = f"loss {loss:.4f}  lr {lr:.2e}  {rate:,.0f} tok/s"
                    progress.update(task, info=info)
                    if not ctx.console.is_terminal:
                        ctx.print(f"step {step}/{self.total_steps}  {info}")
                progress.update(task, completed=step)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                    stopped_early = self._evaluate_and_check(state)
                if cfg.save_every and step % cfg.save_every == 0:
                    self._save(state)
                    last_saved = step
                if stopped_early:
                    ctx.print(
                        f"early stopping at step {step}: no eval_loss improvement in {cfg.early_stopping_patience} evals"
                    )
                    break
        if cfg.save_every and last_saved != state["step"]:
            self._save(state)
        wall = meter.elapsed
        self._save_final()
        final_metrics = self._evaluate(state["step"]) if self.examples.eval else {}
        samples = self._sample()
        return self._summarize(state, meter, wall, final_metrics, samples, stopped_early)

    def _next_group(self, state: dict[str, Any]) -> list[list[dict[str, list[int]]]]:
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

    def _train_step(
        self, group: list[list[dict[str, list[int]]]]
    ) -> tuple[float, float | None, int]:
        import torch

        strategy, ctx = self.strategy, self.ctx
        if self.batcher.pack:
            batches = [collate_packed(rows, self.pad_id) for rows in group]
            tokens = sum(len(e["input_ids"]) for rows in group for row in rows for e in row)
        else:
            batches = [collate(examples, self.pad_id) for examples in group]
            tokens = sum(len(e["input_ids"]) for examples in group for e in examples)
        n_local = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        n_global = strategy.all_reduce_sum(n_local)
        denom = max(n_global, 1) / ctx.world.world_size
        self.model.train()
        loss_sum = torch.zeros((), device=ctx.world.device)
        for j, batch in enumerate(batches):
            batch = {k: v.to(ctx.world.device) for k, v in batch.items()}
            with strategy.accumulate(self.model, is_last=j == len(batches) - 1):
                with strategy.autocast(ctx):
                    # use_cache=False: no KV cache in training, and with a cache transformers
                    # would not detect packed rows (position ids restarting) and would let
                    # packed examples attend to each other.
                    out = self.model(**batch, use_cache=False, num_items_in_batch=denom)
                strategy.backward(out.loss, self.model)
            loss_sum += out.loss.detach().float()
            self.slots += batch["input_ids"].numel()
        grad_norm = strategy.step(self.model, self.optimizer, self.train_cfg.max_grad_norm)
        self.scheduler.step()
        loss = strategy.all_reduce_sum(float(loss_sum)) / ctx.world.world_size
        if not math.isfinite(loss):
            raise RuntimeError(f"loss is {loss}: training diverged (try a lower [optimizer] lr)")
        return loss, grad_norm, tokens

    # -- eval, saving, sampling ----------------------------------------------------------------
    def _eval_data(self) -> EvalData:
        world = self.ctx.world
        examples = self.examples.eval
        size = self.recipe.eval.batch_size or self.train_cfg.micro_batch_size
        per_rank = math.ceil(len(examples) / (world.world_size * size)) * size
        mine = examples[world.rank :: world.world_size]
        blank = {
            "input_ids": examples[0]["input_ids"],
            "labels": [IGNORE] * len(examples[0]["labels"]),
        }
        mine = mine + [blank] * (per_rank - len(mine))  # same batch count on every rank
        return EvalData(
            examples=mine,
            batch_size=size,
            pad_id=self.pad_id,
            device=world.device,
            max_batches=self.recipe.eval.max_batches,
            strategy=self.strategy,
            ctx=self.ctx,
            tokenizer=self.tokenizer,
        )

    def _evaluate(self, step: int) -> dict[str, float]:
        names = self.recipe.eval.metrics
        if not names or not self.examples.eval:
            return {}
        model = self.strategy.unwrap(self.model)
        was_training = model.training
        model.eval()
        try:
            results = self.pm.evaluate(names, model, self._eval_data(), self.ctx)
        finally:
            model.train(was_training)
        self.ctx.metrics.log("eval", step, **results)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in results.items())
        self.ctx.print(f"eval @ step {step}: {shown}")
        return results

    def _evaluate_and_check(self, state: dict[str, Any]) -> bool:
        """Evaluate; returns True when early stopping should end the run."""
        results = self._evaluate(state["step"])
        cfg = self.train_cfg
        value = results.get("eval_loss")
        if value is None or not cfg.early_stopping_patience:
            return False
        best = state["best_eval"]
        if best is None or value < best - cfg.early_stopping_threshold:
            state["best_eval"], state["bad_evals"] = value, 0
        else:
            state["bad_evals"] += 1
        return state["bad_evals"] >= cfg.early_stopping_patience

    def _save(self, state: dict[str, Any]) -> None:
        path = checkpoint.save(
            strategy=self.strategy,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=state,
            rank_state={"stream": self.reader.state_dict()} if self.reader else {},
            recipe_text=self.recipe_text,
            ctx=self.ctx,
            keep_last=self.train_cfg.keep_last,
        )
        self.ctx.metrics.log("checkpoint", state["step"], path=str(path))

    def _save_final(self) -> None:
        out = self.ctx.output_dir
        tmp, final = out / ".tmp-final", out / "final"
        if self.ctx.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.strategy.barrier()
        self.strategy.save_final(self.model, self.tokenizer, tmp, self.ctx)
        if self.ctx.world.is_main:
            self.pm.hook.tune_save_extras(
                model=self.strategy.unwrap(self.model), path=tmp, ctx=self.ctx
            )
        self.strategy.barrier()
        if self.ctx.world.is_main:
            (tmp / "recipe.toml").write_text(self.recipe_text, encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        self.strategy.barrier()

    def _sample(self) -> list[dict[str, str]]:
        """Greedy generations for [generate] prompts, so the user sees what training did."""
        prompts = self.recipe.generate.prompts
        lockstep = self.strategy.sharded_params
        if not prompts or not (self.ctx.world.is_main or lockstep):
            return []
        import torch

        model = self.strategy.unwrap(self.model)
        model.eval()
        loader = self.recipe.selected("loader")
        prepared = self.pm.caller("tune_prepare_generation", loader.backend)(
            name=loader.backend.name, settings=loader.settings, model=model, ctx=self.ctx
        )
        model = prepared if prepared is not None else model
        render = self.examples.render_prompt or (lambda p: p)
        samples = []
        for prompt in prompts:
            enc = self.tokenizer(render(prompt), add_special_tokens=False, return_tensors="pt")
            enc = {k: v.to(self.ctx.world.device) for k, v in enc.items()}
            with torch.no_grad(), self.strategy.autocast(self.ctx):
                out = model.generate(
                    **enc,
                    max_new_tokens=self.recipe.generate.max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=self.pad_id,
                    **({"synced_gpus": True} if lockstep else {}),
                )
            reply = self.tokenizer.decode(
                out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
            samples.append({"prompt": prompt, "reply": reply})
        for s in samples:
            self.ctx.print(
                f"[bold]>>>[/bold] {s['prompt']}\n[green]{s['reply']}[/green]", markup=True
            )
        return samples

    # -- what the user sees ----------------------------------------------------------------------
    def _latest_checkpoint(self) -> Path:
        found = checkpoint.list_checkpoints(self.ctx.output_dir)
        if not found:
            raise TuneError(
                f"--resume found no checkpoint in {checkpoint.checkpoints_dir(self.ctx.output_dir)}.",
                where=f"{self.recipe.path}: [train] output_dir",
                fix="set [train] save_every to write checkpoints, or start without --resume.",
            )
        return found[-1]

    def _announce(self, state: dict[str, Any]) -> None:
        ctx, stats = self.ctx, self.examples.stats
        names = " -> ".join(
            [self.recipe.selected("loader").backend.name]
            + [s.backend.name for s in self.recipe.backends["adapt"]]
        )
        ctx.print(
            f"[bold]tune[/bold] {self.recipe.path}: {names} on {ctx.world.device} "
            f"(world {ctx.world.world_size}), {self.n_trainable:,} of {self.n_total:,} parameters "
            f"trainable ({100 * self.n_trainable / max(self.n_total, 1):.2f}%)"
        )
        ctx.print(
            f"data: {stats.get('train_examples')} train / {stats.get('eval_examples')} eval examples, "
            f"{stats.get('truncated', 0)} truncated, {stats.get('dropped', 0)} dropped, "
            f"tokenization cache {stats.get('cache', 'off')}; "
            f"{self.total_steps} steps ({self.steps_per_epoch}/epoch) -> {ctx.output_dir}"
        )

    def _progress(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.ctx.console,
            disable=not (self.ctx.world.is_main and self.ctx.console.is_terminal),
        )

    def _summarize(
        self, state, meter: Meter, wall: float, final_metrics, samples, stopped_early
    ) -> dict[str, Any]:
        ctx = self.ctx
        tokens = int(self.strategy.all_reduce_sum(state["tokens"]))
        memory = meter.peak_memory()
        summary = {
            "steps": state["step"],
            "epochs": round(
                state["epoch"] + state["micro_in_epoch"] / max(self.micro_per_epoch, 1), 3
            ),
            "tokens": tokens,
            "tokens_per_s": round(tokens / max(wall, 1e-9), 1),
            "packed": self.batcher.pack,
            # real tokens / positions computed (1.0 when packed: no padding at all)
            "token_efficiency": round(tokens / max(self.strategy.all_reduce_sum(self.slots), 1), 4),
            # packed: how full the bins are; padded: the same ratio as planned for epoch 0
            "plan_efficiency": round(self._plan_efficiency(tokens), 4),
            "wall_s": round(wall, 2),
            "peak_memory": memory,
            "first_loss": self.losses[0][1] if self.losses else None,
            "last_loss": self.losses[-1][1] if self.losses else None,
            "eval": final_metrics,
            "trainable_params": self.n_trainable,
            "total_params": self.n_total,
            "data": {**self.examples.stats, **(self.reader.counts if self.reader else {})},
            "world_size": ctx.world.world_size,
            "stopped_early": stopped_early,
            "samples": samples,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if not ctx.world.is_main:
            return summary
        (ctx.output_dir / "summary.json").write_text(
            json.dumps(summary, indent=2), encoding="utf-8"
        )
        self._plot()
        from rich.table import Table

        table = Table("", "", title="run summary", box=None, show_header=False)
        table.add_row("steps", str(summary["steps"]))
        table.add_row("tokens", f"{tokens:,}")
        table.add_row("tokens/s", f"{summary['tokens_per_s']:,.1f}")
        mode = "packed, bins filled" if self.batcher.pack else "padded, real tokens"
        table.add_row("efficiency", f"{100 * summary['plan_efficiency']:.1f}% ({mode})")
        stats = self.examples.stats
        table.add_row(
            "examples",
            f"{stats.get('train_examples')} ({stats.get('truncated', 0)} truncated, {stats.get('dropped', 0)} dropped)",
        )
        table.add_row("wall time", f"{wall:.1f} s")
        mem = human_bytes(memory["bytes"])
        if "percent_of_device" in memory:
            mem += f" reserved ({memory['percent_of_device']}% of device)"
        else:
            mem += " peak RSS (process)"
        table.add_row("peak memory", mem)
        if self.losses:
            table.add_row("loss", f"{summary['first_loss']:.4f} -> {summary['last_loss']:.4f}")
        for key, value in final_metrics.items():
            table.add_row(key, f"{value:.4f}")
        table.add_row("output", str(ctx.output_dir / "final"))
        ctx.print(table)
        return summary

    def _plan_efficiency(self, tokens: int) -> float:
        if self.reader is None:
            return self.batcher.efficiency(0)
        # streaming: measured, tokens over the capacity (packed) or positions (padded) used
        steps = self.losses[-1][0] - self.losses[0][0] + 1 if self.losses else 0
        micro = steps * self.train_cfg.grad_accum * self.ctx.world.world_size
        if self.batcher.pack:
            rows = micro * self.train_cfg.micro_batch_size
            return tokens / max(rows * self.batcher.capacity, 1)
        return tokens / max(self.strategy.all_reduce_sum(self.slots), 1)

    def _plot(self) -> None:
        if not self.losses:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot([s for s, _ in self.losses], [v for _, v in self.losses], lw=1.2, label="train")
        evals = [r for r in self.ctx.metrics.records if r["kind"] == "eval" and "eval_loss" in r]
        if evals:
            ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(str(self.recipe.path.name))
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.ctx.output_dir / "loss.png")
        plt.close(fig)
