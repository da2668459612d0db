"""QLoRA quantization (`[model] quantize = "nf4" | "fp4" | "int8"`) and bitsandbytes optimizers.

Each quantization is a `tune.plugin.Quantization` the core builds from its declaration: its
`config()` (a transformers `BitsAndBytesConfig`) goes to the loader, `prepare(model)` makes the
loaded k-bit model trainable (PEFT's preparation: frozen base, fp32 norms, input grads for
checkpointing), `numel(param)` counts the values a packed 4-bit weight holds and
`dequantize(model)` gives `tune merge` the 4-bit base as float weights. Imports no
torch, peft or bitsandbytes at module level: bitsandbytes is imported only when a recipe
quantizes or uses one of its optimizers.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field
from tune.plugin import AdamStyleSettings, Quantization, Settings, hookimpl, resolve_dtype

TUNE_API = ">=2,<3"


class _KernelNotice(logging.Filter):
    """bitsandbytes warns when it is imported that an optional CPU kernel could not be fetched.
    transformers and peft import it in every run, quantized or not, so the notice is held back
    here and shown once a recipe really uses bitsandbytes (a quantization or an 8-bit
    optimizer), where it concerns the user."""

    LOGGER = "bitsandbytes.backends.cpu.ops"

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "gemm_4bit_forward" in record.getMessage():
            self.held.append(record)
            return False
        return True

    def release(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeFilter(self)
        for record in self.held:
            logger.handle(record)
        self.held.clear()


_NOTICE = _KernelNotice()
logging.getLogger(_KernelNotice.LOGGER).addFilter(_NOTICE)

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


class BnbQuantization(Quantization):
    """A bitsandbytes quantization; subclasses name the quant type (`[model] quantize`)."""

    quant_type = ""

    def config(self):
        _NOTICE.release()
        from transformers import BitsAndBytesConfig

        settings = self.settings
        if self.quant_type == "int8":
            return BitsAndBytesConfig(
                load_in_8bit=True,
                llm_int8_threshold=settings.int8_threshold,
                llm_int8_skip_modules=settings.skip_modules,
            )
        device = self.ctx.world.device if self.ctx is not None else "cpu"
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=settings.double_quant,
            bnb_4bit_compute_dtype=resolve_dtype(settings.compute_dtype, device),
            bnb_4bit_quant_storage=resolve_dtype(settings.quant_storage, device)
            if settings.quant_storage != "uint8"
            else "uint8",
            llm_int8_skip_modules=settings.skip_modules,
        )

    def prepare(self, model):
        from peft import prepare_model_for_kbit_training

        checkpointing = bool(self.ctx is not None and self.ctx.recipe.train.gradient_checkpointing)
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        )

    def dequantize(self, model):
        """The quantized model with each bitsandbytes linear replaced by a float32 nn.Linear
        holding exactly the weights training saw (the quantized values, dequantized): what
        `tune merge` folds an adapter into when the 4-bit base is closer to what was trained.
        None for int8 (its outlier columns run in 16 bits: no one weight matrix to give)."""
        if self.quant_type == "int8":
            return None
        import bitsandbytes as bnb
        import torch

        for name, module in list(model.named_modules()):
            if not isinstance(module, bnb.nn.Linear4bit):
                continue
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            linear = torch.nn.Linear(
                module.in_features, module.out_features, bias=module.bias is not None
            )
            linear.weight.data = weight.float().reshape(module.out_features, module.in_features)
            if module.bias is not None:
                linear.bias.data = module.bias.data.float()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, linear)
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "quantization_config"):
            del config.quantization_config  # a plain model now: saved without it
        for attr in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"):
            if hasattr(model, attr):
                setattr(model, attr, False)
        model.hf_quantizer = None
        model.quantization_method = None  # transformers refuses dtype casts of bnb models
        return model.float()

    def numel(self, param) -> int:
        """Packed 4-bit weights hold 8 / 4 = 2 values per byte of storage."""
        if hasattr(param, "quant_state"):
            return param.numel() * 2 * param.element_size()
        return param.numel()


class NF4(BnbQuantization):
    quant_type = "nf4"


class FP4(BnbQuantization):
    quant_type = "fp4"


class Int8(BnbQuantization):
    quant_type = "int8"


QUANTS = {
    "nf4": (NF4, "4-bit NormalFloat (QLoRA)"),
    "fp4": (FP4, "4-bit float"),
    "int8": (Int8, "LLM.int8()"),
}
OPTIMIZERS = {
    "adamw_8bit": ("AdamW8bit", OptimSettings, "AdamW with 8-bit state"),
    "paged_adamw_8bit": ("PagedAdamW8bit", OptimSettings, "AdamW, 8-bit state in paged memory"),
    "paged_adamw_32bit": ("PagedAdamW32bit", OptimSettings, "AdamW, 32-bit state in paged memory"),
    "lion_8bit": ("Lion8bit", LionSettings, "Lion with 8-bit state"),
}


@hookimpl
def tune_provide(provide):
    from tune_plugin_bitsandbytes import memory

    for name, (cls, doc) in QUANTS.items():
        # peft: its prepare_model_for_kbit_training (the library, not tune's peft plugin)
        provide.quantization(
            name,
            QuantSettings,
            doc=doc,
            build=cls,
            requires=("bitsandbytes", "peft"),
            estimate=memory.ESTIMATES[name],
        )
    for name, (_, settings, doc) in OPTIMIZERS.items():
        provide.optimizer(
            name, settings, doc=doc, requires=("bitsandbytes",), estimate=memory.ESTIMATES[name]
        )


@hookimpl
def tune_build_optimizer(name, settings, params, ctx):
    _NOTICE.release()
    import bitsandbytes as bnb

    cls = getattr(bnb.optim, OPTIMIZERS[name][0])
    kwargs = {"lr": settings.lr, "betas": settings.betas, "weight_decay": settings.weight_decay}
    if not name.startswith("lion"):
        kwargs["eps"] = settings.eps
    if "8bit" in name:
        kwargs["min_8bit_size"] = settings.min_8bit_size
    return cls(params, **kwargs)
