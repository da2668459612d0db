"""`tune run`: strategy -> load -> adapt chain -> data -> objective/optimizer -> loop -> save ->
eval -> samples. This module starts the run and claims its output directory (`outdir`); `setup`,
`loop`, `evaluation` and `report` do the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tune.contract.context import RunContext
from tune.errors import TuneError
from tune.recipe import Recipe


def run_training(
    recipe: Recipe,
    pm,
    *,
    resume: bool = False,
    resume_from: Path | None = None,
    overwrite: bool = False,
    resume_changed: bool = False,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """Run the whole recipe; returns the summary that is also written to summary.json."""
    pm.hook.tune_run_start(recipe=recipe)  # before anything imports torch or transformers
    from tune.train import checkpoint
    from tune.train.loop import Trainer
    from tune.train.outdir import OutputDir
    from tune.train.setup import build_trackers

    output_dir = Path(recipe.train.output_dir)
    ctx = RunContext(recipe=recipe, output_dir=output_dir)
    strategy = pm.call("tune_choose_strategy", recipe.selected("strategy"), ctx=ctx)
    ctx.strategy = strategy
    ctx.world = strategy.setup(ctx)
    _check_world(ctx, pm)
    if not ctx.world.is_main:
        _quiet_libraries()
    output = OutputDir(output_dir, where=f"{recipe.path}: [train] output_dir")
    try:
        if ctx.world.is_main:  # the lock is held by the main process for the whole run
            has_checkpoint = bool(checkpoint.list_checkpoints(output_dir))
            output.claim(resume=resume, overwrite=overwrite, has_checkpoint=has_checkpoint)
        strategy.barrier()
        ctx.metrics = build_trackers(pm, recipe, ctx)
        trainer = Trainer(recipe, pm, ctx, strategy, output, resume_command)
        return trainer.run(resume, resume_from, resume_changed)
    finally:
        output.release()
        strategy.teardown()


def _check_world(ctx: RunContext, pm) -> None:
    from tune.machine.distributed import env_world

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
