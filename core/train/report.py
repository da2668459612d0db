"""What the user sees of a run: the opening lines, the progress bar, the summary and the plot."""

from __future__ import annotations

import json
import time
from typing import Any

from tune.machine.hostmem import describe as describe_host_malloc
from tune.train.meter import human_bytes


def announce(session: Any) -> None:
    ctx, stats, recipe = session.ctx, session.examples.stats, session.recipe
    names = " -> ".join(
        [recipe.selected("loader").backend.name]
        + [s.backend.name for s in recipe.backends["adapt"]]
    )
    objective = recipe.selected("objective").backend.name
    trainable, total = session.trainable_params, session.total_params
    ctx.print(
        f"[bold]tune[/bold] {recipe.path}: {names} on {ctx.world.device} "
        f"(world {ctx.world.world_size}), {trainable:,} of {total:,} parameters "
        f"trainable ({100 * trainable / max(total, 1):.2f}%)"
        + (f", objective {objective}" if objective != "causal_lm" else "")
    )
    plan = session.plan
    if session.batches.streaming:
        data = (
            f"data: streamed (read as training goes), {stats.get('eval_examples', 0)} eval examples"
        )
        steps = f"{plan.total_steps} steps (max_steps)"
    else:
        data = (
            f"data: {stats.get('train_examples')} train / {stats.get('eval_examples')} eval "
            f"examples, {stats.get('truncated', 0)} truncated, {stats.get('dropped', 0)} dropped"
            + "".join(
                f", {stats[key]} {label}"
                for key, label in (
                    ("oversized", "oversized"),
                    ("empty_replies", "empty replies"),
                    ("short", "shorter than min_tokens"),
                )
                if stats.get(key)
            )
        )
        steps = f"{plan.total_steps} steps ({plan.steps_per_epoch}/epoch)"
    ctx.print(
        f"{data}, tokenization cache {stats.get('cache', 'off')}; {steps} -> {ctx.output_dir}"
    )
    ctx.print(f"host allocator: {describe_host_malloc()}", markup=False)


def progress_bar(ctx: Any):
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


def summarize(
    session: Any, state, progress, wall: float, final_metrics, samples, run_dir: Any
) -> dict[str, Any]:
    """The run's summary (every rank computes it: it holds cross-rank sums); rank 0 writes
    summary.json, the loss plot and the table."""
    ctx, reduce = session.ctx, session.ctx.collectives.all_reduce_sum
    tokens = int(reduce(state.tokens))  # the whole run, resumes included
    session_tokens = int(reduce(progress.meter.tokens))  # this process's share of the work
    slots = reduce(progress.slots)
    memory = progress.meter.peak_memory()
    losses = progress.losses
    steps_here = losses[-1][0] - losses[0][0] + 1 if losses else 0
    summary = {
        "steps": state.step,
        "epochs": round(
            state.epoch + state.micro_in_epoch / max(session.plan.micro_per_epoch, 1), 3
        ),
        "tokens": tokens,
        "tokens_this_run": session_tokens,
        # rates from this process's own tokens and time: a resumed run is not credited twice
        "tokens_per_s": round(session_tokens / max(wall, 1e-9), 1),
        "resumed_from_step": session.resumed_step,
        "packed": session.batches.pack,
        # real tokens / positions computed (1.0 when packed: no padding at all)
        "token_efficiency": round(session_tokens / max(slots, 1), 4),
        # packed: how full the bins are; padded: the same ratio as planned for epoch 0
        "plan_efficiency": round(
            session.batches.efficiency(session_tokens, slots, steps_here, ctx.world.world_size), 4
        ),
        "wall_s": round(wall, 2),
        "peak_memory": memory,
        "host_allocator": describe_host_malloc(),
        "first_loss": state.first_loss if state.first_loss is not None else None,
        "last_loss": state.last_loss,
        "eval": final_metrics,
        "trainable_params": session.trainable_params,
        "total_params": session.total_params,
        "data": {**session.examples.stats, **session.batches.counts()},
        "world_size": ctx.world.world_size,
        "stopped_early": progress.stopped_early,
        "samples": samples,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if not ctx.world.is_main:
        return summary
    from tune.train.checkpoints.atomic import write_text

    write_text(ctx.claim("summary.json"), json.dumps(summary, indent=2))
    plot(session, progress.losses)
    ctx.print(summary_table(session, summary))
    return summary


def summary_table(session: Any, summary: dict[str, Any]):
    from rich.table import Table

    table = Table("", "", title="run summary", box=None, show_header=False)
    table.add_row("steps", str(summary["steps"]))
    table.add_row("tokens", f"{summary['tokens']:,}")
    table.add_row("tokens/s", f"{summary['tokens_per_s']:,.1f}")
    mode = "packed, bins filled" if session.batches.pack else "padded, real tokens"
    table.add_row("efficiency", f"{100 * summary['plan_efficiency']:.1f}% ({mode})")
    stats = session.examples.stats
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
    table.add_row("output", str(session.ctx.output_dir / "final"))
    return table


def plot(session: Any, losses: list[tuple[int, float]]) -> None:
    """loss.png: the train loss per step, and eval_loss where it was measured."""
    if not losses:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _records(session.ctx)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps, values = zip(*(train or losses), strict=True)
    ax.plot(steps, values, lw=1.2, label="train")
    evals = [r for r in records if r["kind"] == "eval" and "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(str(session.recipe.path.name))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(session.ctx.claim("loss.png"))
    plt.close(fig)


def _records(ctx: Any) -> list[dict[str, Any]]:
    """The whole run's records (metrics.jsonl spans resumes), else this process's."""
    path = ctx.output_dir / "metrics.jsonl"
    if not path.exists():
        return list(ctx.metrics.records)
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def sample(session: Any, step: int, final: bool = True) -> list[dict[str, str]]:
    """Greedy generations of the [generate] prompts (see `tune.train.samples`)."""
    from tune.train.samples import generate_samples

    recipe, ctx = session.recipe, session.ctx
    model = session.base_model
    prepare = session.prepare_generation if final else None
    lockstep = session.recipe.selected("strategy").capabilities.shards_parameters
    render = session.examples.render_prompt or (lambda p: p)
    samples = generate_samples(
        model,
        session.tokenizer,
        [(p, render(p)) for p in recipe.generate.prompts],
        recipe.generate.max_new_tokens,
        device=ctx.world.device,
        precision=lambda: session.strategy.autocast(ctx),
        lockstep=lockstep,
        on_this_rank=ctx.world.is_main or lockstep,
        prepare=prepare,
        final=final,
    )
    if not samples:
        return []
    if not final:
        ctx.print(f"samples @ step {step}:")
    for s in samples:
        ctx.print(f"[bold]>>>[/bold] {s['prompt']}\n[green]{s['reply']}[/green]", markup=True)
    ctx.metrics.samples(step, samples)
    return samples
