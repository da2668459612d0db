"""Strategy `fsdp`: PyTorch FSDP2 (`fully_shard`) per decoder layer and the root.

Parameters, gradients and optimizer state are sharded across ranks; each decoder layer is
gathered just before it runs and freed after. Checkpoints are sharded through
torch.distributed.checkpoint; `final/` is gathered on rank 0 into a plain model or adapter.
Imports no torch at module level.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from tune.plugin import Capabilities, MultiProcessSettings, hookimpl, processes

TUNE_API = ">=2,<3"


class FSDPSettings(MultiProcessSettings):
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="auto: nccl on CUDA, gloo on CPU"
    )
    cpu_offload: bool = Field(
        False, description="keep sharded parameters, gradients and optimizer state on the CPU"
    )
    reshard_after_forward: bool = Field(
        True, description="free gathered layers after forward (less memory, one more all-gather)"
    )
    reshard_between_micro_batches: bool = Field(
        False,
        description="free gathered layers after each accumulated backward too (less memory, "
        "more all-gathers); by default they stay gathered until the step's last micro-batch",
    )
    low_memory_load: bool = Field(
        True,
        description="rank 0 reads the weights, the others build the model on the meta device "
        "and receive only their shard",
    )
    wrap: list[str] = Field(
        default_factory=list,
        description="module class names sharded as units; default: the model's decoder layers",
    )
    sequence_parallel: int = Field(
        1,
        ge=1,
        description="ranks that split every sequence (Ulysses attention): each holds 1/N of "
        "it and the N ranks of a group get the same examples; data-parallel degree = "
        "processes / N",
    )


CAPABILITIES = Capabilities(
    processes="many",
    shards_parameters=True,
    quantized_models=False,
    precisions=("fp32", "bf16"),
    why={
        "quantized_models": "bitsandbytes stores 4-bit weights as packed uint8 Params4bit whose "
        "quantization state (absmax, code, shape) lives outside the tensor, so fully_shard can "
        "neither split it across ranks nor gather it back into a weight the layer can use",
        "precisions": "fp16 would need a sharded loss scaler",
    },
)


@hookimpl
def tune_provide(provide):
    from tune_plugin_fsdp import memory

    provide.strategy(
        "fsdp",
        FSDPSettings,
        doc="PyTorch FSDP2 fully_shard per layer (nccl on CUDA, gloo on CPU), sharded checkpoints",
        requires=("torch",),
        capabilities=CAPABILITIES,
        estimate=memory.estimate,
    )


@hookimpl
def tune_choose_strategy(settings, ctx):
    from tune_plugin_fsdp.strategy import FSDPStrategy

    return FSDPStrategy(settings)


@hookimpl
def tune_check_recipe(recipe):
    """`sequence_parallel` where it cannot run (heads, adapters), refused before loading."""
    settings = recipe.selected("strategy").settings
    if isinstance(settings, FSDPSettings):
        processes.check_sequence_parallel(recipe, settings.sequence_parallel)
