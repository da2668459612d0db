"""What the user sees of a run: the opening lines, the progress bar, the summary and the plot."""

from __future__ import annotations

import json
import time
from typing import Any

from tune.machine.hostmem import describe as describe_host_malloc
from tune.train.meter import Meter, human_bytes


def announce(trainer: Any) -> None:
    ctx, stats, recipe = trainer.ctx, trainer.examples.stats, trainer.recipe
    names = " -> ".join(
        [recipe.selected("loader").backend.name]
        + [s.backend.name for s in recipe.backends["adapt"]]
    )
    objective = recipe.selected("objective").backend.name
    trainable, total = trainer.n_trainable, trainer.n_total
    ctx.print(
        f"[bold]tune[/bold] {recipe.path}: {names} on {ctx.world.device} "
        f"(world {ctx.world.world_size}), {trainable:,} of {total:,} parameters "
        f"trainable ({100 * trainable / max(total, 1):.2f}%)"
        + (f", objective {objective}" if objective != "causal_lm" else "")
    )
    ctx.print(
        f"data: {stats.get('train_examples')} train / {stats.get('eval_examples')} eval examples, "
        f"{stats.get('truncated', 0)} truncated, {stats.get('dropped', 0)} dropped"
        + "".join(
            f", {stats[key]} {label}"
            for key, label in (
                ("oversized", "oversized"),
                ("empty_replies", "empty replies"),
                ("short", "shorter than min_tokens"),
            )
            if stats.get(key)
        )
        + f", tokenization cache {stats.get('cache', 'off')}; "
        f"{trainer.total_steps} steps ({trainer.steps_per_epoch}/epoch) -> {ctx.output_dir}"
    )
    ctx.print(f"host allocator: {describe_host_malloc()}", markup=False)


def progress(ctx: Any):
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
        console=ctx.console,
        disable=not (ctx.world.is_main and ctx.console.is_terminal),
    )


def summarize(trainer: Any, state, meter: Meter, wall: float, final_metrics, samples, stopped):
    """The run's summary (every rank computes it: it holds cross-rank sums); rank 0 writes
    summary.json, the loss plot and the table."""
    ctx, strategy = trainer.ctx, trainer.strategy
    tokens = int(strategy.all_reduce_sum(state["tokens"]))  # the whole run, resumes included
    session = int(strategy.all_reduce_sum(meter.tokens))  # this process's share of the work
    memory = meter.peak_memory()
    losses = trainer.losses
    summary = {
        "steps": state["step"],
        "epochs": round(
            state["epoch"] + state["micro_in_epoch"] / max(trainer.micro_per_epoch, 1), 3
        ),
        "tokens": tokens,
        "tokens_this_run": session,
        # rates from this process's own tokens and time: a resumed run is not credited twice
        "tokens_per_s": round(session / max(wall, 1e-9), 1),
        "resumed_from_step": trainer.resumed_step,
        "packed": trainer.batcher.pack,
        # real tokens / positions computed (1.0 when packed: no padding at all)
        "token_efficiency": round(session / max(strategy.all_reduce_sum(trainer.slots), 1), 4),
        # packed: how full the bins are; padded: the same ratio as planned for epoch 0
        "plan_efficiency": round(plan_efficiency(trainer, session), 4),
        "wall_s": round(wall, 2),
        "peak_memory": memory,
        "host_allocator": describe_host_malloc(),
        "first_loss": state.get("first_loss", losses[0][1] if losses else None),
        "last_loss": state.get("last_loss", losses[-1][1] if losses else None),
        "eval": final_metrics,
        "trainable_params": trainer.n_trainable,
        "total_params": trainer.n_total,
        "data": {**trainer.examples.stats, **(trainer.reader.counts if trainer.reader else {})},
        "world_size": ctx.world.world_size,
        "stopped_early": stopped,
        "samples": samples,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if not ctx.world.is_main:
        return summary
    (ctx.output_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    plot(trainer)
    ctx.print(summary_table(trainer, summary))
    return summary


def summary_table(trainer: Any, summary: dict[str, Any]):
    from rich.table import Table

    table = Table("", "", title="run summary", box=None, show_header=False)
    table.add_row("steps", str(summary["steps"]))
    table.add_row("tokens", f"{summary['tokens']:,}")
    table.add_row("tokens/s", f"{summary['tokens_per_s']:,.1f}")
    mode = "packed, bins filled" if trainer.batcher.pack else "padded, real tokens"
    table.add_row("efficiency", f"{100 * summary['plan_efficiency']:.1f}% ({mode})")
    stats = trainer.examples.stats
    table.add_row(
        "examples",
        f"{stats.get('train_examples')} ({stats.get('truncated', 0)} truncated, "
        f"{stats.get('dropped', 0)} dropped)",
    )
    table.add_row("wall time", f"{summary['wall_s']:.1f} s")
    memory = summary["peak_memory"]
    mem = human_bytes(memory["bytes"])
    if "percent_of_device" in memory:
        mem += f" reserved ({memory['percent_of_device']}% of device)"
    else:
        mem += " peak RSS (process)"
    table.add_row("peak memory", mem)
    if summary["first_loss"] is not None:
        table.add_row("loss", f"{summary['first_loss']:.4f} -> {summary['last_loss']:.4f}")
    for key, value in summary["eval"].items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("output", str(trainer.ctx.output_dir / "final"))
    return table


def plan_efficiency(trainer: Any, tokens: int) -> float:
    if trainer.reader is None:
        return trainer.batcher.efficiency(0)
    # streaming: measured, tokens over the capacity (packed) or positions (padded) used
    losses, cfg = trainer.losses, trainer.recipe.train
    steps = losses[-1][0] - losses[0][0] + 1 if losses else 0
    micro = steps * cfg.grad_accum * trainer.ctx.world.world_size
    if trainer.batcher.pack:
        rows = micro * cfg.micro_batch_size
        return tokens / max(rows * trainer.batcher.capacity, 1)
    return tokens / max(trainer.strategy.all_reduce_sum(trainer.slots), 1)


def plot(trainer: Any) -> None:
    """loss.png: the train loss per step, and eval_loss where it was measured."""
    if not trainer.losses:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _records(trainer)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps, values = zip(*(train or trainer.losses), strict=True)
    ax.plot(steps, values, lw=1.2, label="train")
    evals = [r for r in records if r["kind"] == "eval" and "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(str(trainer.recipe.path.name))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(trainer.ctx.output_dir / "loss.png")
    plt.close(fig)


def _records(trainer: Any) -> list[dict[str, Any]]:
    """The whole run's records (metrics.jsonl spans resumes), else this process's."""
    path = trainer.ctx.output_dir / "metrics.jsonl"
    if not path.exists():
        return list(trainer.ctx.metrics.records)
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
