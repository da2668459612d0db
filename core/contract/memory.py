"""What `tune estimate` is made of, and how backends contribute to it.

Public as `tune.plugin.memory` (and `MemoryTerm`, `ModelShape` at the top of `tune.plugin`).
The core names no backend: each backend the recipe chooses contributes its own part through
`estimate=` in its declaration, a function called as `estimate(settings, plan)` with the
backend's validated settings and the `Plan` below. What it returns depends on its kind:

    quantization  -> list[MemoryTerm]   the model's weights once quantized (the quantized decoder
                                        linears at their bytes per weight, the rest as loaded)
    adapter       -> AdapterSize | None what one [[adapt]] step trains (None: it adds nothing
                                        and freezes nothing, e.g. a kernel swap)
    optimizer     -> OptimizerState     its state for `plan.trainable` values (+ step temporaries)
    strategy      -> Sharding           what it shards or offloads, its own buffers, and the
                                        settings changes that would save memory (advice)
    loader        -> ModelConfig | None the decoder's config and the parameters beside it (a
                                        vision tower), for models whose config.json the core
                                        cannot read as a decoder's; called as
                                        `estimate(settings, recipe)`; None: the core reads it

An objective contributes through its capabilities: `full_logits` (None, not said: its full
logits are counted, to be safe) and `sequences_per_example`. A backend serving several names
passes a different function per name, as with `build=`. A function may raise `TuneError` for
settings it cannot count (with `where=plan.where`) and may append a sentence to `plan.notes`.

Without `estimate=` a backend is credited with no memory saving, and a note says so: a
quantization is counted unquantized, an adapter as adding nothing (alone, the base is then
counted as trained in full), an optimizer like AdamW (two states per trainable value), a
strategy as replicating everything with its gradient buffers held through forward and
backward. What only it could know (its own buffers, staging copies) is not counted.

Counts are elements (parameters) and bytes on one device, before the allocator's cache.
Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AdapterSize",
    "MemoryTerm",
    "ModelConfig",
    "ModelShape",
    "OptimizerState",
    "Plan",
    "Sharding",
]

# Architectures with a per-head RMSNorm on q and k.
QK_NORM = {"qwen3", "qwen3_moe", "olmo2"}


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
    # Mixture-of-experts layers (0: dense). `intermediate` is then the MLP width one token
    # passes through (experts_per_token x an expert's), `linears` the dense linears only, and
    # `expert_weights` the fused per-layer expert parameters: name -> (in, out) of ONE expert
    # (e.g. gate_up_proj: (hidden, 2 x expert width)), each stored `experts` times.
    experts: int = 0
    experts_per_token: int = 0
    expert_weights: dict[str, tuple[int, int]] = field(default_factory=dict)
    expert_biases: bool = False
    router_bias: bool = False
    layer_extra: int = 0  # other parameters of one decoder layer (gpt-oss: a sink per head)
    # Parameters outside the decoder (a vision tower and projector: `ModelConfig`), frozen
    extra_params: int = 0
    extra_label: str = ""

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_linear_params(self) -> int:
        """Weights (+ biases) of the linear layers of one decoder layer (a MoE layer's experts
        and router included)."""
        dense = sum(i * o + (o if self.biases.get(n) else 0) for n, (i, o) in self.linears.items())
        return dense + self.layer_expert_params() + self.router_params()

    def layer_expert_params(self) -> int:
        """The fused expert weights (+ biases) of one decoder layer (0 for a dense model)."""
        one = sum(i * o + (o if self.expert_biases else 0) for i, o in self.expert_weights.values())
        return self.experts * one

    def router_params(self) -> int:
        return self.experts * self.hidden + (self.experts if self.router_bias else 0)

    def active_params(self) -> int:
        """Parameters one token uses: a MoE model's unpicked experts left out."""
        if not self.experts:
            return self.total_params()
        idle = self.layer_expert_params() * (self.experts - self.experts_per_token) // self.experts
        return self.total_params() - self.layers * idle

    def layer_norm_params(self) -> int:
        return 2 * self.hidden + (2 * self.head_dim if self.model_type in QK_NORM else 0)

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def head_params(self) -> int:
        """lm_head weights stored apart from the embedding (0 when tied)."""
        return 0 if self.tied else self.vocab * self.hidden

    def total_params(self) -> int:
        per_layer = self.layer_linear_params() + self.layer_norm_params() + self.layer_extra
        decoder = self.embedding_params() + self.head_params() + self.layers * per_layer
        return decoder + self.hidden + self.extra_params

    def decoder_linear_params(self) -> int:
        """Weights (+ biases) of every decoder layer's nn.Linear layers: what k-bit quantization
        packs (bitsandbytes replaces nn.Linear; fused 3-D expert weights stay as loaded)."""
        return self.layers * (
            self.layer_linear_params() - self.layer_expert_params() - self.router_params()
        )


@dataclass(frozen=True)
class ModelConfig:
    """What a loader's `estimate=` returns: the config of the model's decoder (the keys of a
    Llama-family config.json: hidden_size, num_hidden_layers, ...) and the parameters the model
    holds beside it (e.g. a vision tower and projector), counted as frozen weights."""

    config: dict[str, Any]
    extra_params: int = 0
    extra_label: str = ""


@dataclass
class MemoryTerm:
    """One row of `tune estimate`'s table: bytes per device, the formula a user can check, the
    phases that hold them (load, compute, step) and whether they live in host RAM (offload)."""

    name: str
    bytes: float
    formula: str
    phases: tuple[str, ...] = ("load", "compute", "step")
    host: bool = False  # offloaded: lives in host RAM, not on the device


@dataclass(frozen=True)
class AdapterSize:
    """What one [[adapt]] step trains, from the shapes alone."""

    params: int  # trainable parameters it adds (its weights, and full copies it trains)
    # Base linears it wraps (names in `ModelShape.linears`): backward needs their inputs.
    targets: tuple[str, ...] = ()
    # Elements it saves for backward per token and decoder layer (LoRA: its r-wide middle per
    # target).
    saved: int = 0
    # (elements, how many) of its trainable matrices: what an optimizer's per-tensor rules see
    # (8-bit state only above a size, the largest step temporary). LoRA: A and B per target.
    tensors: tuple[tuple[int, int], ...] = ()
    summary: str = ""  # for the formula, e.g. "r=8 on q_proj/v_proj x 32 layers"
    # Elements per decoder layer held from its forward to its backward whatever the tokens:
    # LoRA on fused expert weights (PEFT's target_parameters) adds the update to the whole
    # expert stack for the layer's matmul, and that merged copy is saved for backward.
    layer_copy: int = 0


@dataclass(frozen=True)
class OptimizerState:
    """An optimizer's memory for all `plan.trainable` values; the core shards and offloads it
    as the strategy says."""

    bytes: float  # its state (momenta, ...) for every trainable value
    formula: str
    # Temporaries of one step beyond the state (phases ("step",)), or None. Dropped where the
    # strategy's engine runs its own step (`Sharding.own_step`).
    step: MemoryTerm | None = None


@dataclass(frozen=True)
class Sharding:
    """What a strategy does to the memory of each rank. The defaults are one process holding
    everything, gradients only through the step."""

    # ZeRO-like stage: 0 replicates; 1 shards the optimizer state over the ranks; 2 also the
    # gradients; 3 also the parameters.
    stage: int = 0
    optimizer_on_host: bool = False  # optimizer state (and sharded gradients) offloaded
    parameters_on_host: bool = False  # sharded parameters offloaded to host RAM
    # Bytes per weight and per trainable value the engine holds (e.g. 2: 16-bit weights with
    # an fp32 master copy of its own, counted in `terms`); None: the loaded dtype's, or 4 for
    # trainable values under [train] master_weights = "fp32".
    weight_bytes: int | None = None
    persistent_gradients: bool = False  # gradient buffers live through forward and backward
    # Under 16-bit autocast each matmul saves a 16-bit copy of its fp32 weight (a full
    # fine-tune): False where the engine casts the weights itself.
    autocast_copies: bool = True
    own_step: bool = False  # the engine runs the optimizer step (no optimizer temporaries)
    terms: tuple[MemoryTerm, ...] = ()  # its own buffers: buckets, gathered parameters, ...
    # Changes of its own settings that save memory, cheapest in speed first, each a dict of
    # its settings keys to values; `tune estimate` suggests the first that fits, as
    # `-o strategy.KEY=VALUE`.
    variants: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Plan:
    """The training being estimated: the model's shape and what the recipe decides, resolved
    for the target device. Adapters and quantizations are asked first: for them `adapters` is
    empty and `trainable` 0; strategies and optimizers see the whole adapt chain."""

    shape: ModelShape
    device: str  # "gpu" or "cpu" (host RAM is the device)
    ranks: int  # processes the strategy runs (devices)
    precision: str  # "fp32", "bf16" or "fp16"
    weight_bytes: int  # bytes per weight as loaded ([model] dtype resolved)
    file_dtype: str  # dtype of the checkpoint on disk ("float32", "bfloat16", ...)
    quantized: bool  # [model] quantize is set
    full: bool  # every weight trains (no adapter, not quantized)
    trainable: int  # trainable values (all weights in a full fine-tune, else the adapters')
    # Bytes per trainable value: strategies see it before their own `weight_bytes`,
    # optimizers after.
    trainable_bytes: int
    adapters: tuple[AdapterSize, ...]
    micro_batch: int
    seq: int  # [model] max_seq_len
    sequences: int  # sequences per example (the objective's `sequences_per_example`)
    grad_accum: int
    checkpointing: bool
    where: str = ""  # where the recipe chooses the asked backend, for a TuneError
    notes: list[str] = field(default_factory=list)  # sentences shown under the table
