"""`tune run`: strategy -> run directory -> trackers -> resume plan -> session -> restore ->
loop -> final save -> eval -> samples -> summary. This module starts the run and owns its
directory (`rundir`); `session` builds what the loop runs, `loop` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tune.contract.collectives import Collectives
from tune.contract.context import RunContext
from tune.errors import TuneError
from tune.recipe import Recipe, dump_toml


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
    _preload(recipe)  # before anything imports torch or transformers
    from tune.train.checkpoints.save import list_checkpoints
    from tune.train.rundir import RunDir
    from tune.train.setup import build_trackers

    output_dir = Path(recipe.train.output_dir)
    ctx = RunContext(recipe=recipe, output_dir=output_dir)
    strategy = pm.call("tune_choose_strategy", recipe.selected("strategy"), ctx=ctx)
    ctx.strategy = strategy
    ctx.world = strategy.setup(ctx)
    ctx.collectives = Collectives(ctx.world.device)
    _check_world(ctx, pm)
    if not ctx.world.is_main:
        _quiet_libraries()
    run_dir = RunDir(output_dir, where=f"{recipe.path}: [train] output_dir")
    try:
        if ctx.world.is_main:  # the lock is held by the main process for the whole run
            has_checkpoint = bool(list_checkpoints(output_dir))
            run_dir.claim_run(resume=resume, overwrite=overwrite, has_checkpoint=has_checkpoint)
            ctx.run_dir = run_dir
        ctx.collectives.barrier()
        ctx.metrics = build_trackers(pm, recipe, ctx)
        command = resume_command or f"tune run {recipe.path} --resume"
        return _run(recipe, pm, ctx, run_dir, resume, resume_from, resume_changed, command)
    finally:
        run_dir.release()
        strategy.teardown()


def _run(recipe, pm, ctx, run_dir, resume, resume_from, resume_changed, command) -> dict:
    from tune.contract.tracker import RunInfo
    from tune.train.checkpoints import choose
    from tune.train.loop import train
    from tune.train.session import build_session
    from tune.train.state import LoopState

    recipe_text = dump_toml(recipe.resolved())
    # Before anything loads or is written: which checkpoint, and is it still this run?
    settings = choose.run_settings(pm, ctx)
    plan = choose.plan(pm, ctx, resume_from, resume_changed, settings) if resume else None
    if plan is not None and plan.changes:
        recipe_text = (
            f"# resumed from {plan.path} with --resume-changed: "
            f"{choose.manifest.format_changes(plan.changes)}\n" + recipe_text
        )
    session = build_session(
        recipe, pm, ctx, recipe_text=recipe_text, run_settings=settings, resume_command=command
    )
    state = LoopState()
    if plan is not None and plan.path is not None:
        state = _restore(session, plan, explicit=resume_from is not None)
    ctx.metrics.start(
        RunInfo(
            recipe=recipe.resolved(),
            output_dir=ctx.output_dir,
            name=ctx.output_dir.resolve().name,
            step=state.step,
            resumed=resume,
            logged_until=_logged_until(ctx.output_dir) if resume else 0,
        ),
        state.trackers,
    )
    return train(session, state, run_dir if ctx.world.is_main else None, resumed=resume)


def _logged_until(output_dir: Path) -> int:
    """The last train step metrics.jsonl holds (before the resume truncates it)."""
    import json

    last = 0
    path = output_dir / "metrics.jsonl"
    if not path.is_file() or path.is_symlink():
        return 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("kind") == "train":
            step = record.get("step")
            last = max(last, step) if isinstance(step, int) else last
    return last


def _restore(session: Any, plan: Any, explicit: bool) -> Any:
    """The checkpoint into the session; with accepted changes, the new recipe's optimizer
    settings and schedule replace the saved ones from this step on."""
    import warnings

    from tune.train.checkpoints import manifest
    from tune.train.checkpoints.restore import load_with_fallback

    optimizer = session.optimizer
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    path, state = load_with_fallback(
        Path(plan.path), session, load_scheduler=not plan.changes, explicit=explicit
    )
    session.resumed_step = state.step
    if plan.changes:
        for group, values in zip(optimizer.param_groups, fresh, strict=True):
            group.update(values)
        with warnings.catch_warnings():  # replaying the schedule, no optimizer steps
            warnings.simplefilter("ignore")
            for _ in range(state.step):
                session.scheduler.step()
        session.batches.rescale(state)
        session.ctx.print(
            "[yellow]resuming with changed settings:[/yellow] "
            + manifest.format_changes(plan.changes)
        )
    session.ctx.print(f"resumed from {path} at step {state.step}")
    return state


def _preload(recipe: Recipe) -> None:
    """Modules the recipe's loader must import before torch and transformers (Unsloth)."""
    import sys

    loader = recipe.backends.get("loader")
    for module in loader.backend.preload if loader is not None else ():
        if "transformers" in sys.modules and module not in sys.modules:
            print(
                f"tune: warning: transformers was imported before {module}, which "
                f"[model] loader = '{loader.backend.name}' needs first",
                file=sys.stderr,
            )
        __import__(module)


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
