"""Adapt step `liger`: Liger's Triton kernels patched into a loaded Llama, Mistral or Qwen2.

    [[adapt]]
    method = "liger"          # before or after lora; rms_norm/rope/swiglu/fused_linear_cross_entropy

RMSNorm, rotary embeddings and the SwiGLU MLP run as fused kernels, and with
`fused_linear_cross_entropy` the model's own forward computes the loss without the full logits
(tune's chunked loss then stands aside for Liger's: the model's forward is Liger's). Without a
CUDA GPU, or without liger-kernel installed, STATUS says so and the core refuses recipes using it
at validation. The step declares the kernels it replaces (`replaces_kernels`), so the core also
refuses it beside another backend that swaps the same ones (the unsloth loader). No torch or
liger import at module level.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from pydantic import Field
from tune.plugin import Capabilities, Settings, TuneError, hookimpl

TUNE_API = ">=2,<3"

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


def replaced_kernels(settings: LigerSettings) -> tuple[str, ...]:
    """The model kernels Liger swaps in for these settings, by the names every backend uses
    for them (`Capabilities.replaces_kernels`)."""
    chosen = {
        "rms_norm": settings.rms_norm,
        "rope": settings.rope,
        "swiglu": settings.swiglu,
        "cross_entropy": settings.fused_linear_cross_entropy,
    }
    return tuple(kernel for kernel, on in chosen.items() if on)


def capabilities(settings: LigerSettings) -> Capabilities:
    return Capabilities(
        devices=("cuda",),
        replaces_kernels=replaced_kernels(settings),
        why={
            "devices": "Liger's kernels are Triton GPU kernels",
            "replaces_kernels": "Liger patches these layers with its fused kernels",
        },
    )


@hookimpl
def tune_provide(provide):
    provide.adapter(
        METHOD,
        LigerSettings,
        doc="Liger kernels for Llama/Mistral/Qwen2 (CUDA GPU only)",
        capabilities=capabilities,
    )


# -- where it can run (no torch) ----------------------------------------------------------------
def gpu_present() -> bool:
    """A CUDA GPU is visible, judged without importing torch (the CLI must start without it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def why_not_here() -> str | None:
    """Why Liger cannot run on this machine, or None. As STATUS, the core refuses recipes with a
    liger step with this line (so it says the way out on any device too)."""
    if not gpu_present():
        return (
            "needs a CUDA GPU (Liger's kernels are Triton GPU kernels; tune's chunked loss, "
            "[train] chunked_loss = true, keeps the logits out of memory on any device)"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        return 'liger-kernel not installed: pip install "tune-plugin-liger[liger]"'
    return None


@hookimpl
def tune_plugin_status():
    return why_not_here()


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
