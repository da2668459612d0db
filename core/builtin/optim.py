"""Optimizer `adamw`: torch's AdamW (fused on CUDA when asked)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from tune.hookspecs import hookimpl


class OptimizerSettings(BaseModel):
    """Keys every optimizer shares; plugins extend this model with their own."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class AdamStyleSettings(OptimizerSettings):
    """Adam-family keys, shared with the optimizers of other plugins (8-bit, AnyPrecision)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class AdamWSettings(AdamStyleSettings):
    fused: bool | None = Field(None, description="None = fused on CUDA, foreach otherwise")


@hookimpl
def tune_provide(provide):
    provide.optimizer("adamw", AdamWSettings, doc="torch.optim.AdamW")


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
