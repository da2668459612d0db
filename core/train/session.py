"""`RunSession`: everything a run is made of, built once; the loop, checkpoints and the report
read it. Nothing outside `tune.train` sees it: objectives get a `RunData`, metrics an
`EvalData`, trackers their events.

    build_session: seed -> recipe.toml -> model chain -> data -> objective -> batches ->
                   optimizer -> scheduler -> strategy.prepare -> objective.prepare
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tune.contract.context import RunContext
from tune.contract.objective import RunData
from tune.data.examples import Examples
from tune.recipe import Recipe
from tune.train import sequence_parallel, setup
from tune.train.batches import Batches


@dataclass
class RunSession:
    """The built run: what the loop steps, saves and reports on."""

    recipe: Recipe
    pm: Any
    ctx: RunContext
    strategy: Any
    model: Any  # as the loop calls it (wrapped by the strategy)
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    objective: Any
    examples: Examples
    batches: Batches
    pad_id: int
    trainable_params: int
    total_params: int
    recipe_text: str  # the resolved recipe, saved beside every checkpoint and in final/
    run_settings: dict[str, Any]  # what a resume must find unchanged (the manifest's)
    resume_command: str
    prepare_generation: Any = None  # the loader's fast-generation switch, if it has one
    # this rank's sequence-parallel group (tune.train.sequence_parallel), None without one
    sequence_parallel: Any = None
    resumed_step: int | None = None  # the checkpoint's step when this session resumed one

    @property
    def plan(self) -> Any:
        return self.batches.plan

    @property
    def base_model(self) -> Any:
        """The model without the strategy's wrapper (what plugins and generation see)."""
        return self.strategy.unwrap(self.model)


def build_session(
    recipe: Recipe,
    pm: Any,
    ctx: RunContext,
    *,
    recipe_text: str,
    run_settings: dict[str, Any],
    resume_command: str,
) -> RunSession:
    from transformers import set_seed
    from tune.data.pipeline import load_examples
    from tune.data.templates import end_of_turn_ids
    from tune.train.checkpoints.atomic import write_text

    strategy = ctx.strategy
    set_seed(recipe.train.seed)
    if ctx.world.is_main:
        write_text(ctx.claim("recipe.toml"), recipe_text)
    loaded, quantization = setup.build_model(pm, recipe, ctx)
    model, tokenizer = loaded.model, loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    examples = load_examples(pm, tokenizer, ctx)
    end_of_turn_ids(model, tokenizer)  # samples during training stop at a named template's eos
    objective = pm.build(recipe.selected("objective"), ctx)
    sp = sequence_parallel.start(getattr(strategy, "sequence_parallel", 1), model, ctx)
    data_world = ctx.world
    if sp is not None:  # the ranks of a group get the same examples
        data_world = dataclasses.replace(ctx.world, rank=sp.data_rank, world_size=sp.data_world)
    batches = Batches(examples, objective, recipe, data_world, pad_id)
    trainable, total = setup.count_parameters(model, quantization)
    opt_sel = recipe.selected("optimizer")
    groups = setup.param_groups(model, getattr(opt_sel.settings, "weight_decay", 0.0))
    optimizer = pm.call("tune_build_optimizer", opt_sel, params=groups, ctx=ctx)
    scheduler = setup.build_scheduler(recipe, optimizer, batches.plan.total_steps)
    model, optimizer = strategy.prepare(model, optimizer, ctx)
    objective.prepare(
        model,
        RunData(
            train=examples.train,
            eval=examples.eval,
            micro_batch_size=recipe.train.micro_batch_size,
            pad_id=pad_id,
            tokenizer=tokenizer,
            device=ctx.world.device,
            rank=ctx.world.rank,
            world_size=ctx.world.world_size,
            streaming=batches.streaming,
            collectives=ctx.collectives,
            precision=lambda: strategy.autocast(ctx),
        ),
    )
    return RunSession(
        recipe=recipe,
        pm=pm,
        ctx=ctx,
        strategy=strategy,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=objective,
        examples=examples,
        batches=batches,
        pad_id=pad_id,
        trainable_params=trainable,
        total_params=total,
        recipe_text=recipe_text,
        run_settings=run_settings,
        resume_command=resume_command,
        prepare_generation=loaded.prepare_generation,
        sequence_parallel=sp,
    )
