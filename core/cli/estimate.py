"""`tune estimate RECIPE`: will it fit? Per-device memory from the config, no weights loaded."""

from __future__ import annotations

import json
import sys

import click
from tune.cli.base import (
    CONTEXT_SETTINGS,
    _console,
    _plugin_manager,
    cli,
    find_recipe,
    override_option,
    plugin_option,
)

GiB = 1 << 30


def _gib(n: float) -> str:
    return f"{n / GiB:,.2f}"


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f}"


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recipe")
@click.option("--gpus", type=int, default=None, help="Devices (ranks) the strategy shards over.")
@click.option(
    "--gpu-memory",
    default=None,
    metavar="SIZE",
    help="Memory of one device, e.g. 80GB or 24GiB (default: the local GPU, else host RAM).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@override_option
@plugin_option
@click.pass_context
def estimate(ctx, recipe, gpus, gpu_memory, as_json, overrides, plugin_opts) -> None:
    """Predict per-device training memory for RECIPE without loading weights.

    Each row is one term with its formula; the peak is the largest phase (loading, forward /
    backward, optimizer step). Exit 0 when it fits, 1 when it does not (with what to change).
    """
    from tune.errors import TuneError
    from tune.estimate import estimate as run_estimate
    from tune.estimate import parse_size
    from tune.recipe import load_recipe

    if gpus is not None and gpus < 1:
        raise TuneError("--gpus must be at least 1.", where="--gpus", fix="e.g. --gpus 8.")
    memory = parse_size(gpu_memory) if gpu_memory else None
    pm = _plugin_manager(ctx, plugin_opts)
    rec = load_recipe(find_recipe(recipe), list(overrides), plugins=pm)
    result = run_estimate(rec, gpus=gpus, gpu_memory=memory, plugins=pm)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=1))
    else:
        _print(result, rec)
    sys.exit(0 if result.fits else 1)


def _print(result, rec) -> None:
    from rich.markup import escape
    from rich.table import Table

    s = result.setup
    console = _console()
    sh = s.shapes
    console.print(
        f"[bold]{rec.path}[/bold]: {sh.model_type}, {sh.total_params() / 1e6:,.1f}M parameters "
        + (
            f"({sh.active_params() / 1e6:,.1f}M active per token: {sh.experts_per_token} of "
            f"{sh.experts} experts) "
            if sh.experts
            else ""
        )
        + (f"(+{sh.extra_params / 1e6:,.1f}M {sh.extra_label}) " if sh.extra_params else "")
        + f"({sh.layers} layers, hidden {sh.hidden}, vocab {sh.vocab:,}); {s.ranks} x {s.device}, "
        f"strategy {s.strategy.backend.name}, weights {s.quantize or s.weight_dtype}, precision "
        f"{s.precision}, micro-batch {s.micro_batch} x {s.seq} tokens, checkpointing "
        f"{'on' if s.checkpointing else 'off'}, chunked loss {'on' if s.chunked else 'off'}"
    )
    table = Table("TERM", "MiB / DEVICE", "FORMULA", "PHASES", box=None)
    for term in result.terms:
        where = "host (offloaded)" if term.host else ", ".join(term.phases)
        table.add_row(escape(term.name), _mib(term.bytes), escape(term.formula), where)
    console.print(table)
    phases = ", ".join(f"{k} {_mib(v)}" for k, v in result.phases.items())
    console.print(f"phases (MiB): {phases}")
    console.print(
        f"[bold]peak {_gib(result.peak)} GiB per device[/bold] ({result.peak_phase}) + about "
        f"{_gib(result.as_dict()['overhead_bytes'])} GiB runtime overhead, against "
        f"{result.capacity_label}"
    )
    if result.host:
        console.print(f"offloaded to host RAM: {_gib(result.host)} GiB per rank")
    for note in s.notes:
        console.print(f"note: {escape(note)}")
    verdict = "[green]fits[/green]" if result.fits else "[red]does not fit[/red]"
    console.print(
        f"{verdict}; largest that fit: micro_batch_size {result.max_micro_batch or 'none'} "
        f"(at max_seq_len {s.seq}), max_seq_len {result.max_seq_len or 'none'} "
        f"(at micro_batch_size {s.micro_batch})"
    )
    if not result.fits:
        if result.advice:
            console.print("each of these changes alone would make it fit:")
            for line in result.advice:
                console.print(f"  {escape(line)}")
        elif not result.max_micro_batch:
            console.print(
                "no single setting makes it fit: combine the changes above, or use "
                "more devices (--gpus) with a sharding strategy."
            )
