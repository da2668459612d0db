"""Optimizer `anyprecision_adamw`: AdamW whose state lives in a chosen dtype.

Meant for pure-bf16 training (bf16 weights, no fp32 master copy): momentum and variance in bf16
halve the state, and Kahan summation keeps the small updates that bf16 weights would otherwise
round away. The optimizer itself is in `optimizer.py`; this module stays import-light.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from tune.plugin import AdamStyleSettings, hookimpl

TUNE_API = ">=2,<3"

StateDType = Literal["bfloat16", "float16", "float32"]


class AnyPrecisionSettings(AdamStyleSettings):
    momentum_dtype: StateDType = "bfloat16"
    variance_dtype: StateDType = "bfloat16"
    use_kahan_summation: bool = Field(
        True, description="compensate rounding of low-precision weights"
    )
    compensation_buffer_dtype: StateDType = "bfloat16"


@hookimpl
def tune_provide(provide):
    from tune_plugin_anyprecision import memory

    provide.optimizer(
        "anyprecision_adamw",
        AnyPrecisionSettings,
        doc="AdamW with bf16 (or chosen) state and Kahan-compensated updates",
        estimate=memory.estimate,
    )


@hookimpl
def tune_build_optimizer(name, settings, params, ctx):
    import torch

    from tune_plugin_anyprecision.optimizer import AnyPrecisionAdamW

    return AnyPrecisionAdamW(
        params,
        lr=settings.lr,
        betas=settings.betas,
        eps=settings.eps,
        weight_decay=settings.weight_decay,
        use_kahan_summation=settings.use_kahan_summation,
        momentum_dtype=getattr(torch, settings.momentum_dtype),
        variance_dtype=getattr(torch, settings.variance_dtype),
        compensation_buffer_dtype=getattr(torch, settings.compensation_buffer_dtype),
    )
