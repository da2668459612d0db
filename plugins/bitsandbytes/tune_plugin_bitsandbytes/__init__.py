"""QLoRA quantization (`[model] quantize = "nf4" | "fp4" | "int8"`) and bitsandbytes optimizers.

The quantization config goes to the loader through `tune_quantization_config`; after loading,
`tune_prepare_quantized_model` makes the k-bit model trainable (PEFT's preparation: frozen base,
fp32 norms, input grads for checkpointing). Imports no torch or bitsandbytes at module level.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from tune.plugin import AdamStyleSettings, Settings, hookimpl, resolve_dtype

DType = Literal["auto", "bfloat16", "float16", "float32"]


class QuantSettings(Settings):
    compute_dtype: DType = Field(
        "auto", description="matmul dtype of 4-bit layers; auto = bf16 on a bf16 GPU, else fp32"
    )
    double_quant: bool = Field(True, description="quantize the quantization constants too (4-bit)")
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8",
        description="storage dtype of 4-bit weights (match the compute dtype for ZeRO-3/FSDP)",
    )
    skip_modules: list[str] | None = Field(
        None, description="modules kept unquantized, e.g. lm_head"
    )
    int8_threshold: float = Field(6.0, description="LLM.int8 outlier threshold (int8 only)")


class OptimSettings(AdamStyleSettings):
    min_8bit_size: int = Field(
        4096, ge=0, description="tensors smaller than this keep 32-bit state"
    )


class LionSettings(OptimSettings):
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)


QUANTS = {"nf4": "4-bit NormalFloat (QLoRA)", "fp4": "4-bit float", "int8": "LLM.int8()"}
OPTIMIZERS = {
    "adamw_8bit": ("AdamW8bit", OptimSettings, "AdamW with 8-bit state"),
    "paged_adamw_8bit": ("PagedAdamW8bit", OptimSettings, "AdamW, 8-bit state in paged memory"),
    "paged_adamw_32bit": ("PagedAdamW32bit", OptimSettings, "AdamW, 32-bit state in paged memory"),
    "lion_8bit": ("Lion8bit", LionSettings, "Lion with 8-bit state"),
}


@hookimpl
def tune_provide(provide):
    for name, doc in QUANTS.items():
        provide.quantization(name, QuantSettings, doc=doc)
    for name, (_, settings, doc) in OPTIMIZERS.items():
        provide.optimizer(name, settings, doc=doc)


@hookimpl
def tune_quantization_config(name, settings, ctx):
    from transformers import BitsAndBytesConfig

    if name == "int8":
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=settings.int8_threshold,
            llm_int8_skip_modules=settings.skip_modules,
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=name,
        bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(settings.compute_dtype, ctx.world.device),
        bnb_4bit_quant_storage=resolve_dtype(settings.quant_storage, ctx.world.device)
        if settings.quant_storage != "uint8"
        else "uint8",
        llm_int8_skip_modules=settings.skip_modules,
    )


@hookimpl
def tune_prepare_quantized_model(name, settings, model, ctx):
    from peft import prepare_model_for_kbit_training

    checkpointing = ctx.recipe.train.gradient_checkpointing
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
    )


@hookimpl
def tune_logical_numel(name, settings, param):
    """Packed 4-bit weights hold 8 / 4 = 2 values per byte of storage."""
    if hasattr(param, "quant_state"):
        return param.numel() * 2 * param.element_size()
    return param.numel()


@hookimpl
def tune_build_optimizer(name, settings, params, ctx):
    import bitsandbytes as bnb

    cls = getattr(bnb.optim, OPTIMIZERS[name][0])
    kwargs = {"lr": settings.lr, "betas": settings.betas, "weight_decay": settings.weight_decay}
    if not name.startswith("lion"):
        kwargs["eps"] = settings.eps
    if "8bit" in name:
        kwargs["min_8bit_size"] = settings.min_8bit_size
    return cls(params, **kwargs)
