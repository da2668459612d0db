"""What `tune estimate` is made of: the model's shape and memory terms. Backends contribute
their own terms through `estimate=` in their declaration; these are the types they use.
Imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Architectures with a per-head RMSNorm on q and k.
QK_NORM = {"qwen3", "olmo2"}


@dataclass
class ModelShape:
    """A decoder model's sizes, read from its config (no weights): what memory terms are
    computed from, in parameters (not bytes). `linears` maps each linear layer of one decoder
    layer to its (in, out) features; `config` is the whole config.json."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    linears: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (in, out)
    biases: dict[str, bool] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_linear_params(self) -> int:
        """Weights (+ biases) of the linear layers of one decoder layer."""
        return sum(i * o + (o if self.biases.get(n) else 0) for n, (i, o) in self.linears.items())

    def layer_norm_params(self) -> int:
        return 2 * self.hidden + (2 * self.head_dim if self.model_type in QK_NORM else 0)

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def head_params(self) -> int:
        """lm_head weights stored apart from the embedding (0 when tied)."""
        return 0 if self.tied else self.vocab * self.hidden

    def total_params(self) -> int:
        per_layer = self.layer_linear_params() + self.layer_norm_params()
        return self.embedding_params() + self.head_params() + self.layers * per_layer + self.hidden


@dataclass
class MemoryTerm:
    """One row of `tune estimate`'s table: bytes per device, the formula a user can check, the
    phases that hold them (load, compute, step) and whether they live in host RAM (offload)."""

    name: str
    bytes: float
    formula: str
    phases: tuple[str, ...] = ("load", "compute", "step")
    host: bool = False  # offloaded: lives in host RAM, not on the device
