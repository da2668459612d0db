"""Adapt step `liger`: Liger's Triton kernels patched into a loaded Llama, Mistral or Qwen2.

    [[adapt]]
    method = "liger"          # before or after lora; rms_norm/rope/swiglu/fused_linear_cross_entropy

RMSNorm, rotary embeddings and the SwiGLU MLP run as fused kernels, and with
`fused_linear_cross_entropy` the model's own forward computes the loss without the full logits
(tune's chunked loss then stands aside for Liger's: the model's forward is Liger's). Without a
CUDA GPU, or without liger-kernel installed, STATUS says so and recipes using it are refused at
validation. No torch or liger import at module level.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from pydantic import Field
from tune.plugin import Settings, TuneError, hookimpl

METHOD = "liger"
# model_type -> the liger_kernel.transformers function that patches that architecture
PATCHES = {
    "llama": "apply_liger_kernel_to_llama",
    "mistral": "apply_liger_kernel_to_mistral",
    "qwen2": "apply_liger_kernel_to_qwen2",
}


class LigerSettings(Settings):
    rms_norm: bool = Field(True, description="fused RMSNorm")
    rope: bool = Field(True, description="fused rotary position embedding")
    swiglu: bool = Field(True, description="fused SwiGLU MLP")
    fused_linear_cross_entropy: bool = Field(
        True, description="loss without materializing the logits (Liger's own forward)"
    )


@hookimpl
def tune_provide(provide):
    provide.adapter(
        METHOD, LigerSettings, doc="Liger kernels for Llama/Mistral/Qwen2 (CUDA GPU only)"
    )


# -- where it can run (no torch) ----------------------------------------------------------------
def gpu_present() -> bool:
    """A CUDA GPU is visible, judged without importing torch (the CLI must start without it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def why_not_here() -> str | None:
    """Why Liger cannot run on this machine, or None."""
    if not gpu_present():
        return "needs a CUDA GPU (Liger's kernels are Triton GPU kernels)"
    if importlib.util.find_spec("liger_kernel") is None:
        return 'liger-kernel not installed: pip install "tune-plugin-liger[liger]"'
    return None


@hookimpl
def tune_plugin_status():
    return why_not_here()


def _uses_liger(recipe) -> bool:
    return any(s.backend.name == METHOD for s in recipe.backends.get("adapt", []))


@hookimpl
def tune_check_recipe(recipe):
    if not _uses_liger(recipe):
        return
    reason = why_not_here()
    if reason:
        raise TuneError(
            f"[[adapt]] method = 'liger' cannot run here: {reason}.",
            where=f"{recipe.path}: [[adapt]] method",
            fix="remove the liger step (tune's chunked loss, [train] chunked_loss = true, "
            "already keeps the logits out of memory on any device), or run on a CUDA machine.",
        )
    if recipe.model.loader == "unsloth":
        raise TuneError(
            "[[adapt]] method = 'liger' with loader = 'unsloth': Unsloth patches the same "
            "layers with its own kernels.",
            where=f"{recipe.path}: [[adapt]] method",
            fix="remove the liger step (Unsloth already fuses these), or use loader = "
            '"transformers".',
        )


# -- the work (GPU) -------------------------------------------------------------------------------
def inner_model(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (liger patches that one)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def patch_kwargs(settings: LigerSettings) -> dict[str, bool]:
    """Keyword arguments of liger's apply_liger_kernel_to_* for these settings."""
    return {
        "rms_norm": settings.rms_norm,
        "rope": settings.rope,
        "swiglu": settings.swiglu,
        "fused_linear_cross_entropy": settings.fused_linear_cross_entropy,
        "cross_entropy": False,
    }


@hookimpl
def tune_adapt_model(name, settings, model, ctx):
    inner = inner_model(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type not in PATCHES:
        raise TuneError(
            f"[[adapt]] method = 'liger' supports {', '.join(sorted(PATCHES))} models; this "
            f"model is {model_type!r}.",
            where=f"{ctx.recipe.path}: [[adapt]] method",
            fix="remove the liger step for this model.",
        )
    import liger_kernel.transformers as liger

    getattr(liger, PATCHES[model_type])(model=inner, **patch_kwargs(settings))
    fused = [k for k, v in patch_kwargs(settings).items() if v]
    ctx.print(f"liger: {', '.join(fused)} on {type(inner).__name__}")
    return model
