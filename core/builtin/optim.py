"""Optimizer `adamw`: torch's AdamW (fused on CUDA when asked)."""

from __future__ import annotations

from pydantic import Field
from tune.builtin import memory
from tune.plugin import AdamStyleSettings, hookimpl


class AdamWSettings(AdamStyleSettings):
    fused: bool | None = Field(None, description="None = fused on CUDA, foreach otherwise")


@hookimpl
def tune_provide(provide):
    provide.optimizer("adamw", AdamWSettings, doc="torch.optim.AdamW", estimate=memory.adamw)


@hookimpl
def tune_build_optimizer(settings: AdamWSettings, params, ctx):
    import torch

    fused = settings.fused
    if fused is None:
        fused = ctx.world.device.startswith("cuda")
    return torch.optim.AdamW(
        params,
        lr=settings.lr,
        betas=settings.betas,
        eps=settings.eps,
        weight_decay=settings.weight_decay,
        fused=fused or None,
    )
