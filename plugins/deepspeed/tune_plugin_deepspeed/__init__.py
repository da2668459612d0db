"""Strategy `deepspeed`: ZeRO stages 1/2/3 with optional CPU/NVMe offload, via deepspeed.initialize.

The DeepSpeed config is built from the recipe (batch sizes, accumulation, clipping and precision
always come from `[train]` and the world size, so they cannot disagree); an optional raw JSON
supplies anything else, and recipe keys win over it. Imports no deepspeed at module level.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from tune.plugin import MultiProcessSettings, TuneError, hookimpl

Offload = Literal["none", "cpu", "nvme"]


class DeepSpeedSettings(MultiProcessSettings):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: Offload = "none"
    offload_params: Offload = Field("none", description="ZeRO-3 only")
    nvme_path: str | None = Field(None, description="folder for nvme offload")
    config: str | None = Field(
        None, description="a DeepSpeed JSON whose values the recipe keys override"
    )
    overlap_comm: bool | None = None
    contiguous_gradients: bool = True
    reduce_bucket_size: int | None = None
    low_memory_load: bool = Field(
        True,
        description="ZeRO-3: build the model already partitioned (deepspeed.zero.Init) and "
        "have each rank read only its partition of every weight from the safetensors files, "
        "so no rank holds the whole model while loading (bench/results/lowmem_load.md); "
        "without local safetensors files transformers loads under zero.Init itself",
    )


@hookimpl
def tune_provide(provide):
    provide.strategy("deepspeed", DeepSpeedSettings, doc="DeepSpeed ZeRO 1/2/3, CPU/NVMe offload")


@hookimpl
def tune_check_recipe(recipe):
    """Incompatible combinations, explained before any model loads."""
    if recipe.strategy.name != "deepspeed":
        return
    settings = recipe.selected("strategy").settings
    where = f"{recipe.path}: [strategy]"
    if settings.offload_params != "none" and settings.zero_stage != 3:
        raise TuneError(
            f"offload_params = '{settings.offload_params}' needs zero_stage = 3 (only ZeRO-3 "
            f"partitions parameters), but zero_stage = {settings.zero_stage}.",
            where=where,
            fix='set zero_stage = 3, or offload_params = "none".',
        )
    if "nvme" in (settings.offload_params, settings.offload_optimizer) and not settings.nvme_path:
        raise TuneError(
            "nvme offload needs nvme_path, a folder on a fast local disk.",
            where=where,
            fix='add nvme_path = "/local_nvme/ds" to [strategy], or offload to "cpu".',
        )
    if recipe.model.quantize and settings.zero_stage == 3:
        raise TuneError(
            f"QLoRA (quantize = '{recipe.model.quantize}') with ZeRO-3 is not supported: ZeRO-3 "
            "partitions every parameter, and bitsandbytes' packed 4-bit weights cannot be "
            "partitioned and gathered back by it in this version of tune.",
            where=where,
            fix="use zero_stage = 2 (the 4-bit base is replicated, LoRA and optimizer state are "
            "sharded), or drop quantize for ZeRO-3.",
        )


@hookimpl
def tune_choose_strategy(settings, ctx):
    from tune_plugin_deepspeed.strategy import DeepSpeedStrategy

    return DeepSpeedStrategy(settings)
