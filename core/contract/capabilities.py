"""Capabilities: what a backend supports, declared as data and checked by the core.

A backend declares them with `provide.<kind>(..., capabilities=Capabilities(...))`, or with a
function of its validated settings when they depend on them (`lambda s: Capabilities(
shards_parameters=s.zero_stage == 3)`). Before anything loads, the core checks the recipe's
backends against each other's declarations (`tune.registry.compatibility`), so no plugin ever
compares another plugin's name. A field left at its default claims nothing. `why` explains a
restriction in the refusal a user reads: `why={"quantized_models": "..."}`.
Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Processes = Literal["one", "many"]


@dataclass(frozen=True)
class Capabilities:
    """What one backend supports. Each field says which kinds it is meant for."""

    # strategy: how many processes it runs ("one" or "many"). Any other backend: "one" means it
    # works only in a single process (Unsloth's loader).
    processes: Processes | None = None
    # strategy: parameters are partitioned across ranks (ZeRO-3, FSDP): every rank joins each
    # forward (generation runs in lockstep) and a frozen copy of the model cannot be kept.
    shards_parameters: bool = False
    # strategy: it can train a model loaded k-bit quantized ([model] quantize).
    quantized_models: bool = True
    # strategy: the [train] precision values it supports; None = all.
    precisions: tuple[str, ...] | None = None
    # any backend: it needs one of these device types visible ("cuda"); None = any device.
    devices: tuple[str, ...] | None = None
    # loader, adapter: kernels it swaps into the model ("rms_norm", "rope", "swiglu",
    # "cross_entropy"); two backends of one recipe that swap the same kernel conflict.
    replaces_kernels: tuple[str, ...] = ()
    # adapter: it lets a model train on sequences beyond its position window (compression,
    # position scaling), so [model] max_seq_len may exceed the model's positions.
    extends_positions: bool = False
    # adapter: its trained weights fold into the base weights (a plain model can be exported).
    mergeable: bool = True
    # objective: it keeps a frozen reference of the model (the base with adapters off, or a copy
    # of a fully trained model).
    needs_reference: bool = False
    # objective: it computes [rows, length, vocab] logits (counted by `tune estimate`); False
    # when it takes label log-probabilities chunk-wise (`tune.plugin.token_logprobs`). None
    # (not said): `tune estimate` counts the full logits, to be safe.
    full_logits: bool | None = None
    # objective: sequences per example in a micro-batch (a preference pair is 2).
    sequences_per_example: int = 1
    # objective: it accepts packed micro-batches ([data] pack = true).
    packs: bool = True
    # objective: it accepts streamed data ([data] streaming = true).
    streams: bool = True
    # metric: the example kinds it can score; None = any.
    scores: tuple[str, ...] | None = None
    # Why a restriction above holds, keyed by field name: shown in the refusal.
    why: Mapping[str, str] = field(default_factory=dict)


CapabilitiesSpec = Capabilities | Callable[[Any], Capabilities] | None


def resolve(spec: CapabilitiesSpec, settings: Any) -> Capabilities:
    """The capabilities a declaration gives for these validated settings."""
    if spec is None:
        return Capabilities()
    if isinstance(spec, Capabilities):
        return spec
    result = spec(settings)
    if not isinstance(result, Capabilities):
        raise TypeError(
            f"a capabilities function returned {type(result).__name__}, not Capabilities"
        )
    return result
