"""`tune validate`, `tune run`, `tune data preview|stats`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

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


# -- validate and run ---------------------------------------------------------------------------
def _validated(ctx, recipe_text, overrides, plugin_opts):
    from tune.contract.context import RunContext
    from tune.data.pipeline import validate_data
    from tune.model.checks import validate_model
    from tune.recipe import load_recipe

    pm = _plugin_manager(ctx, plugin_opts)
    recipe = load_recipe(find_recipe(recipe_text), list(overrides), plugins=pm)
    run_ctx = RunContext(recipe=recipe, output_dir=Path(recipe.train.output_dir))
    summary = validate_data(pm, run_ctx)
    validate_model(recipe)
    return pm, recipe, summary


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recipe")
@override_option
@plugin_option
@click.pass_context
def validate(ctx, recipe: str, overrides: tuple[str, ...], plugin_opts: tuple[str, ...]) -> None:
    """Check a recipe, its plugins and its data files without loading a model."""
    from rich.table import Table

    _, rec, data_summary = _validated(ctx, recipe, overrides, plugin_opts)
    table = Table("CONCERN", "BACKEND", "PLUGIN", box=None)
    b = rec.backends
    rows = [("strategy", b["strategy"]), ("loader", b["loader"])]
    rows += [("quantize", b["quantization"])] if "quantization" in b else []
    rows += [("adapt", sel) for sel in b["adapt"]]
    rows += [("data", b["data_format"]), ("data source", b["data_source"])]
    for fmt, src in zip(b["data_mix"], b["data_mix_source"], strict=True):
        rows += [("data mix", fmt), ("data mix source", src)]
    rows += [("optimizer", b["optimizer"]), ("objective", b["objective"])]
    rows += [("metric", sel) for sel in b["metrics"].values()]
    rows += [("tracker", sel) for sel in b["track"]]
    for label, sel in rows:
        table.add_row(label, sel.backend.name, sel.backend.plugin)
    console = _console()
    console.print(  # one line however long the path: scripts and tests grep it
        f"[green]ok[/green] {rec.path}" + (f": {data_summary}" if data_summary else ""),
        soft_wrap=True,
    )
    console.print(table)
    for line in _adapter_reach(rec):
        console.print(line, highlight=False)


def _adapter_reach(rec: Any) -> list[str]:
    """What each [[adapt]] step trains, from the model's config alone (as `tune estimate`
    counts it), and a warning when a mixture-of-experts model's experts are left out. Nothing
    when the config cannot be read offline (a hub model not in the local cache)."""
    if not rec.backends["adapt"]:
        return []
    from tune.errors import TuneError
    from tune.estimate import model_shapes
    from tune.estimate.setup import build_setup

    try:
        shapes = model_shapes(rec)
        adapters = build_setup(rec, shapes, "cpu", 1).adapters
    except TuneError:
        return []
    lines = [f"adapt: {a.summary}: {a.params:,} trainable" for a in adapters]
    if shapes.experts and adapters and not any(a.layer_copy for a in adapters):
        lines.append(
            f"[yellow]warning:[/yellow] the model's {shapes.experts} experts per layer are not "
            'adapted: use targets = "all-linear" (experts included) or experts = true.'
        )
    return lines


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("recipe")
@override_option
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in output_dir.")
@click.option(
    "--resume-from",
    type=click.Path(path_type=Path),
    default=None,
    help="Continue from this checkpoint directory.",
)
@click.option(
    "--resume-changed",
    is_flag=True,
    help="Resume although training settings changed; the new values take effect.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace the previous run in output_dir (tune's files only)."
)
@click.option(
    "--nproc-per-node",
    type=int,
    default=1,
    show_default=True,
    help="Processes per node (relaunches under torchrun).",
)
@click.option("--nnodes", type=int, default=1, show_default=True, help="Number of nodes.")
@click.option("--node-rank", type=int, default=0, show_default=True, help="This node's rank.")
@click.option("--master-addr", default=None, help="Address of the rank-0 node (multi-node).")
@click.option("--master-port", type=int, default=None, help="Port of the rank-0 node (multi-node).")
@plugin_option
@click.pass_context
def run(
    ctx,
    recipe,
    overrides,
    resume,
    resume_from,
    resume_changed,
    overwrite,
    nproc_per_node,
    nnodes,
    node_rank,
    master_addr,
    master_port,
    plugin_opts,
) -> None:
    """Train with RECIPE (a path, or the name of a shipped recipe such as quickstart).

    With --nproc-per-node N (and --nnodes ...), tune validates once, then relaunches itself under
    torch.distributed.run; a run started by torchrun, deepspeed or srun joins by itself.
    """
    import tune.cli
    from tune.machine.distributed import env_world, relaunch

    if tune.cli.OWN_COMMAND_LINE:  # glibc's allocator settings are read at process start
        from tune.machine.hostmem import restart_with_tuned_malloc

        restart_with_tuned_malloc()
    pm, rec, _ = _validated(ctx, recipe, overrides, plugin_opts)
    args = ["run", str(rec.path)]
    for item in overrides:
        args += ["-o", item]
    for item in list((ctx.find_root().obj or {}).get("plugin_opts", ())) + list(plugin_opts):
        args += ["-p", item]
    started = env_world()
    if nproc_per_node > 1 or nnodes > 1:
        _check_processes(rec, pm, nproc_per_node * nnodes)
    if (nproc_per_node > 1 or nnodes > 1) and started is None:
        if resume:
            args.append("--resume")
        if resume_from is not None:
            args += ["--resume-from", str(resume_from)]
        if resume_changed:
            args.append("--resume-changed")
        if overwrite:
            args.append("--overwrite")
        code = relaunch(args, nproc_per_node, nnodes, node_rank, master_addr, master_port)
        sys.exit(code)
    from tune.train.run import run_training

    nproc = nproc_per_node if started is None else started.world_size
    resume_args = args + (["--nproc-per-node", str(nproc)] if nproc > 1 else []) + ["--resume"]
    try:
        run_training(
            rec,
            pm,
            resume=resume or resume_from is not None,
            resume_from=resume_from,
            overwrite=overwrite,
            resume_changed=resume_changed,
            resume_command="python -m tune " + " ".join(shlex.quote(a) for a in resume_args),
        )
    except KeyboardInterrupt:  # before the loop, or while saving: nothing half-written stays
        from tune.train.checkpoint import list_checkpoints
        from tune.train.signals import EXIT_ABORTED, RunStopped

        found = list_checkpoints(Path(rec.train.output_dir))
        kept = f"the last checkpoint ({found[-1]}) is intact" if found else "no checkpoint exists"
        raise RunStopped(f"interrupted: {kept}", EXIT_ABORTED) from None


def _check_processes(rec, pm, processes: int) -> None:
    """Several processes for a strategy that runs one: refused before relaunching anything."""
    from tune.errors import TuneError

    strategy = rec.selected("strategy")
    if strategy.capabilities.processes != "one":
        return
    many = sorted(
        b.name
        for b in pm.declared("strategy")
        if b.capabilities_for(_defaults(b.settings)).processes == "many"
    )
    raise TuneError(
        f"--nproc-per-node/--nnodes ask for {processes} processes, but [strategy] name = "
        f"'{strategy.backend.name}' runs a single process.",
        where=f"{rec.path}: [strategy] name",
        fix=f"choose a multi-process strategy ({', '.join(many) or 'none installed'}), e.g. "
        f"-o strategy.name={many[0] if many else 'ddp'}, or run without --nproc-per-node.",
    )


def _defaults(settings_model):
    try:
        return settings_model()
    except Exception:  # settings without defaults: the declaration's capabilities say enough
        return None


@cli.group(context_settings=CONTEXT_SETTINGS)
def data() -> None:
    """See the data as the model will: rendered tokens, lengths, batching efficiency."""


@data.command("preview")
@click.argument("recipe")
@click.option("-n", "count", type=int, default=3, show_default=True, help="How many examples.")
@override_option
@plugin_option
@click.pass_context
def data_preview(ctx, recipe: str, count: int, overrides, plugin_opts) -> None:
    """Render examples exactly as trained: trained tokens green, masked tokens dim."""
    from tune.data.inspect import preview

    pm, rec, _ = _validated(ctx, recipe, overrides, plugin_opts)
    preview(rec, pm, count, _console())


@data.command("stats")
@click.argument("recipe")
@override_option
@plugin_option
@click.pass_context
def data_stats(ctx, recipe: str, overrides, plugin_opts) -> None:
    """Length histogram, packing/padding efficiency and the estimated number of steps."""
    from tune.data.inspect import stats

    pm, rec, _ = _validated(ctx, recipe, overrides, plugin_opts)
    stats(rec, pm, _console())
