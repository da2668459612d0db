"""Strategy `deepspeed`: ZeRO stages 1/2/3 with optional CPU/NVMe offload, via deepspeed.initialize.

The DeepSpeed config is built from the recipe (batch sizes, accumulation, clipping and precision
always come from `[train]` and the world size, so they cannot disagree); an optional raw JSON
supplies anything else, and recipe keys win over it. Imports no deepspeed at module level.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from tune.plugin import Capabilities, MultiProcessSettings, hookimpl, processes

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
    sequence_parallel: int = Field(
        1,
        ge=1,
        description="ranks that split every sequence (Ulysses attention): each holds 1/N of "
        "it and the N ranks of a group get the same examples; data-parallel degree = "
        "processes / N",
    )

    @model_validator(mode="after")
    def _offload_fits(self) -> DeepSpeedSettings:
        """Offload settings DeepSpeed cannot run, explained before any model loads."""
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ValueError(
                f"offload_params = '{self.offload_params}' needs zero_stage = 3 (only ZeRO-3 "
                f"partitions parameters), but zero_stage = {self.zero_stage}; set zero_stage = 3, "
                'or offload_params = "none"'
            )
        if "nvme" in (self.offload_params, self.offload_optimizer) and not self.nvme_path:
            raise ValueError(
                "nvme offload needs nvme_path, a folder on a fast local disk; add "
                'nvme_path = "/local_nvme/ds" to [strategy], or offload to "cpu"'
            )
        return self


# Why a ZeRO-3 run cannot train a quantized model, in the refusal a user reads.
QLORA_WITH_ZERO3 = (
    "with zero_stage = 3: ZeRO-3 partitions every parameter, and bitsandbytes' packed 4-bit "
    "weights cannot be partitioned and gathered back by it in this version of tune; "
    "zero_stage = 2 trains them, the 4-bit base replicated and LoRA weights, gradients and "
    "optimizer state sharded"
)


def capabilities(settings: DeepSpeedSettings) -> Capabilities:
    """ZeRO-3 partitions parameters, which bitsandbytes' packed 4-bit weights do not survive."""
    zero3 = settings.zero_stage == 3
    return Capabilities(
        processes="many",
        shards_parameters=zero3,
        quantized_models=not zero3,
        why={"quantized_models": QLORA_WITH_ZERO3},
    )


@hookimpl
def tune_provide(provide):
    from tune_plugin_deepspeed import memory

    provide.strategy(
        "deepspeed",
        DeepSpeedSettings,
        doc="DeepSpeed ZeRO 1/2/3, CPU/NVMe offload",
        capabilities=capabilities,
        estimate=memory.estimate,
    )


@hookimpl
def tune_choose_strategy(settings, ctx):
    from tune_plugin_deepspeed.strategy import DeepSpeedStrategy

    return DeepSpeedStrategy(settings)


@hookimpl
def tune_check_recipe(recipe):
    """`sequence_parallel` where it cannot run (heads, adapters), refused before loading."""
    settings = recipe.selected("strategy").settings
    if isinstance(settings, DeepSpeedSettings):
        processes.check_sequence_parallel(recipe, settings.sequence_parallel)
