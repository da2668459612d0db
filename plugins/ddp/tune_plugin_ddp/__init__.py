"""Strategy `ddp`: DistributedDataParallel, one process per device (or per CPU worker).

Each rank sees its own shard of every optimizer step's examples (the core shards by rank and
reshuffles per epoch); gradients sync only at the last micro-batch of a step (`no_sync`).
Weights and optimizer state are replicated, so rank 0 alone writes checkpoints.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from tune.hookspecs import hookimpl


class DDPSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="auto: nccl on CUDA, gloo on CPU"
    )
    find_unused_parameters: bool = False
    bucket_cap_mb: float = Field(25.0, gt=0)
    gradient_as_bucket_view: bool = True
    static_graph: bool = False
    timeout_s: int = Field(
        600, ge=10, description="collective timeout: a stuck rank fails instead of hanging"
    )


@hookimpl
def tune_provide(provide):
    provide.strategy("ddp", DDPSettings, doc="DistributedDataParallel (nccl on CUDA, gloo on CPU)")


@hookimpl
def tune_choose_strategy(settings, ctx):
    from tune_plugin_ddp.strategy import DDPStrategy

    return DDPStrategy(settings)
