"""Base classes of backend settings models: the keys a backend reads from its recipe table.

Every settings model rejects unknown keys (a misspelled key is an error with a suggestion, not a
silently ignored value). Families of backends share their common keys by subclassing.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """Base of every backend's settings: unknown recipe keys are rejected, and a float key is a
    finite number (`lr = inf` or `nan` is refused at validation, not discovered as a NaN loss)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class OptimizerSettings(Settings):
    """Keys every optimizer shares (the core reads `weight_decay` to build parameter groups)."""

    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class AdamStyleSettings(OptimizerSettings):
    """Adam-family keys."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class MultiProcessSettings(Settings):
    """Keys every multi-process strategy shares."""

    timeout_s: int = Field(
        600, ge=10, description="collective timeout: a stuck rank fails instead of hanging"
    )
