"""`tune run`: strategy -> load -> adapt chain -> data -> objective/optimizer -> loop -> save ->
eval -> samples. This module starts the run and guards its output directory; `setup`, `loop`,
`evaluation` and `report` do the rest.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tune.context import RunContext
from tune.errors import TuneError
from tune.recipe import Recipe


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
    from tune.train.loop import Trainer
    from tune.train.setup import build_trackers

    output_dir = Path(recipe.train.output_dir)
    ctx = RunContext(recipe=recipe, output_dir=output_dir)
    strategy = pm.call("tune_choose_strategy", recipe.selected("strategy"), ctx=ctx)
    ctx.world = strategy.setup(ctx)
    _check_world(ctx, pm)
    if not ctx.world.is_main:
        _quiet_libraries()
    try:
        _guard_output_dir(ctx, resume, overwrite)
        strategy.barrier()
        ctx.metrics = build_trackers(pm, recipe, ctx)
        return Trainer(recipe, pm, ctx, strategy).run(resume, resume_from)
    finally:
        strategy.teardown()


def _check_world(ctx: RunContext, pm) -> None:
    from tune.distributed import env_world

    started = env_world()
    if started is not None and started.world_size > 1 and ctx.world.world_size == 1:
        others = [b.name for b in pm.declared("strategy") if b.name != ctx.recipe.strategy.name]
        raise TuneError(
            f"this process was started as one of {started.world_size}, but [strategy] name = "
            f"'{ctx.recipe.strategy.name}' runs a single process.",
            where=f"{ctx.recipe.path}: [strategy] name",
            fix=f"use a multi-process strategy (installed: {', '.join(others) or 'none'}).",
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
