"""Strategy `single`: one process on one device (cuda, mps or cpu, chosen automatically)."""

from __future__ import annotations

from typing import Literal

from tune.builtin import memory
from tune.plugin import Capabilities, Settings, Strategy, hookimpl


class SingleSettings(Settings):
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"


@hookimpl
def tune_provide(provide):
    provide.strategy(
        "single",
        SingleSettings,
        doc="one process, one device (auto: cuda > mps > cpu)",
        capabilities=Capabilities(processes="one"),
        estimate=memory.single,
    )


@hookimpl
def tune_choose_strategy(settings: SingleSettings, ctx):
    device = None if settings.device == "auto" else settings.device
    if device == "cuda":
        device = "cuda:0"
    return Strategy(device=device)
