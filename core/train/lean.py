"""Leaner activations for the gated MLP of Llama-family models: exact, on by default.

Autograd keeps four [tokens, intermediate] tensors per MLP for backward: the gate output (for
SiLU), SiLU(gate) and the up output (for the product), and the product (the input the down
projection's LoRA and weight gradients need). The intermediate size is ~2.7x the hidden size,
so these are over half of a decoder layer's saved activations. Here the MLP keeps only the gate
and up outputs and recomputes SiLU, the product and the down projection in backward
(non-reentrant checkpointing of that tail): the same numbers, two tensors fewer per layer, for
one extra down projection per layer (a sixth of the MLP's matmuls) in backward.

Only the exact transformers classes listed below, with their own forward and SiLU, are changed;
a module whose forward someone else replaced (Unsloth, Liger) or an unknown class is left alone.
"""

from __future__ import annotations

import types
from typing import Any

GATED_MLPS = {
    "LlamaMLP": "transformers.models.llama.modeling_llama",
    "MistralMLP": "transformers.models.mistral.modeling_mistral",
    "Qwen2MLP": "transformers.models.qwen2.modeling_qwen2",
    "Qwen3MLP": "transformers.models.qwen3.modeling_qwen3",
}


def is_plain_gated_mlp(module: Any) -> bool:
    """A known transformers gated MLP, running its own class forward with SiLU."""
    import torch

    cls = type(module)
    if GATED_MLPS.get(cls.__name__) != cls.__module__ or "forward" in vars(module):
        return False
    if getattr(cls.forward, "__module__", None) != cls.__module__:
        return False  # the class forward was patched (Liger, Unsloth)
    act = getattr(module, "act_fn", None)
    if isinstance(act, torch.nn.SiLU):
        return True
    return (
        type(act).__name__ == "SiLUActivation"
        and "forward" not in vars(act)
        and type(act).forward.__module__ == "transformers.activations"
    )


def _down_of_swiglu(down_proj: Any, gate: Any, up: Any) -> Any:
    import torch.nn.functional as F

    return down_proj(F.silu(gate) * up)


def _lean_forward(self: Any, x: Any) -> Any:
    import torch
    import torch.utils.checkpoint

    gate, up = self.gate_proj(x), self.up_proj(x)
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return torch.utils.checkpoint.checkpoint(
            _down_of_swiglu, self.down_proj, gate, up, use_reentrant=False
        )
    return _down_of_swiglu(self.down_proj, gate, up)


def apply_lean_activations(model: Any) -> int:
    """Give every plain gated MLP of `model` the lean forward; returns how many."""
    count = 0
    for module in model.modules():
        if is_plain_gated_mlp(module):
            module.forward = types.MethodType(_lean_forward, module)
            count += 1
    return count


def remove_lean_activations(model: Any) -> None:
    """Back to the class forward (what `apply_lean_activations` changed only)."""
    for module in model.modules():
        bound = vars(module).get("forward")
        if getattr(bound, "__func__", None) is _lean_forward:
            del module.forward
