"""The DDP strategy: the core's torch strategy plus a process group and model wrapping.

Reductions (loss normalization, metrics) go through the run's `ctx.collectives`, which reduce
over the default process group this strategy starts.
"""

from __future__ import annotations

import contextlib

import torch.distributed as dist
from tune.plugin import Strategy, World, processes


class DDPStrategy(Strategy):
    name = "ddp"

    def __init__(self, settings):
        super().__init__()
        self.settings = settings
        self.sequence_parallel = settings.sequence_parallel

    def setup(self, ctx) -> World:
        return processes.start_process_group(
            ctx, "ddp", self.settings.backend, self.settings.timeout_s
        )

    def prepare(self, model, optimizer, ctx):
        from torch.nn.parallel import DistributedDataParallel

        model, optimizer = super().prepare(model, optimizer, ctx)
        cuda = ctx.world.device.startswith("cuda")
        wrapped = DistributedDataParallel(
            model,
            device_ids=[ctx.world.local_rank] if cuda else None,
            find_unused_parameters=self.settings.find_unused_parameters,
            bucket_cap_mb=self.settings.bucket_cap_mb,
            gradient_as_bucket_view=self.settings.gradient_as_bucket_view,
            static_graph=self.settings.static_graph,
        )
        return wrapped, optimizer

    def accumulate(self, model, is_last: bool):
        return contextlib.nullcontext() if is_last else model.no_sync()

    def teardown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
