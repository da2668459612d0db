"""Strategy `ddp`: DistributedDataParallel, one process per device (or per CPU worker).

Each rank sees its own shard of every optimizer step's examples (the core shards by rank and
reshuffles per epoch); gradients sync only at the last micro-batch of a step (`no_sync`).
Weights and optimizer state are replicated, so rank 0 alone writes checkpoints.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from tune.plugin import Capabilities, MultiProcessSettings, hookimpl, processes


class DDPSettings(MultiProcessSettings):
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="auto: nccl on CUDA, gloo on CPU"
    )
    find_unused_parameters: bool = False
    bucket_cap_mb: float = Field(25.0, gt=0)
    gradient_as_bucket_view: bool = True
    static_graph: bool = False
    sequence_parallel: int = Field(
        1,
        ge=1,
        description="ranks that split every sequence (Ulysses attention): each holds 1/N of "
        "it and the N ranks of a group get the same examples; data-parallel degree = "
        "processes / N",
    )


@hookimpl
def tune_provide(provide):
    from tune_plugin_ddp import memory

    provide.strategy(
        "ddp",
        DDPSettings,
        doc="DistributedDataParallel (nccl on CUDA, gloo on CPU)",
        capabilities=Capabilities(processes="many"),
        estimate=memory.estimate,
    )


@hookimpl
def tune_choose_strategy(settings, ctx):
    from tune_plugin_ddp.strategy import DDPStrategy

    return DDPStrategy(settings)


@hookimpl
def tune_check_recipe(recipe):
    """`sequence_parallel` where it cannot run (heads, adapters), refused before loading."""
    settings = recipe.selected("strategy").settings
    if isinstance(settings, DDPSettings):
        processes.check_sequence_parallel(recipe, settings.sequence_parallel)
