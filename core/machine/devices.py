"""Devices and dtypes: the one place "auto" is decided (bf16 on a bf16 GPU, else fp32).

Imports torch only inside the functions.
"""

from __future__ import annotations

from typing import Any

# Precision names used by recipes and commands, and the torch dtype names they mean.
PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def auto_device() -> str:
    """cuda:0 > mps > cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda:0"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(precision: str, device: str) -> str:
    """`[train] precision`: "auto" is bf16 on a CUDA device that supports it, else fp32."""
    if precision != "auto":
        return precision
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def resolve_dtype(name: str, device: str) -> Any:
    """A torch dtype from "auto" | "bfloat16" | "float16" | "float32" (auto as above)."""
    import torch

    if name == "auto":
        name = PRECISION_DTYPES[resolve_precision("auto", device)]
    return getattr(torch, name)


def _hidden(*keys: str) -> bool:
    """A device-mask variable set to hide every device ("" or "-1")."""
    import os

    return any("".join(os.environ.get(k, "x").split()) in ("", "-1") for k in keys)


def visible_device_types() -> set[str]:
    """Accelerator types this process would see, judged without importing torch (the CLI and
    validation must start without it): "cuda" for an NVIDIA GPU (or AMD's, which torch drives
    through the same API), and always "cpu"."""
    from pathlib import Path

    found = {"cpu"}
    nvidia = Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()
    if nvidia and not _hidden("CUDA_VISIBLE_DEVICES"):
        found.add("cuda")
    amd_masks = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
    if Path("/dev/kfd").exists() and not _hidden(*amd_masks):
        found.add("cuda")
    return found
