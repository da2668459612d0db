"""Strategy `single`: one process on one device (cuda, mps or cpu, chosen automatically)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from tune.registry.hookspecs import hookimpl


class SingleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"


@hookimpl
def tune_provide(provide):
    provide.strategy(
        "single", SingleSettings, doc="one process, one device (auto: cuda > mps > cpu)"
    )


@hookimpl
def tune_choose_strategy(settings: SingleSettings, ctx):
    from tune.contract.strategy import Strategy

    device = None if settings.device == "auto" else settings.device
    if device == "cuda":
        device = "cuda:0"
    return Strategy(device=device)
