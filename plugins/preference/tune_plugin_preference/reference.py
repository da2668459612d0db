"""The reference policy of DPO: the base under the adapter, or a frozen copy of the model.

With a PEFT adapter the reference is the same model with its adapter disabled, so no second
copy is held in memory. For a full fine-tune a frozen deep copy is taken once, before training.
"""

from __future__ import annotations

import contextlib
from typing import Any


def unwrap(model: Any) -> Any:
    """The model inside a strategy's wrapper (DDP, DeepSpeed keep it as `.module`)."""
    return getattr(model, "module", model)


def is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class Reference:
    """Computes reference outputs for a batch; `copy` is None when the adapter is switched off."""

    def __init__(self) -> None:
        self.copy: Any = None
        self.mode = "unset"

    def setup(self, model: Any) -> None:
        import copy

        inner = unwrap(model)
        if is_peft(inner):
            self.mode = "adapter"
            return
        self.mode = "copy"
        self.copy = copy.deepcopy(inner)
        self.copy.requires_grad_(False)
        self.copy.eval()

    def logprobs(self, model: Any, labels: Any, chunked: bool = True, **inputs: Any) -> Any:
        """The reference model's per-token label log-probs for `inputs` (as `token_logprobs`
        gives them: chunked, no full logits where exact), without gradients."""
        import torch
        from tune.plugin import token_logprobs

        inner = unwrap(model)
        if self.mode == "unset":  # loss() called before the objective's prepare (a test)
            self.setup(model)
        with torch.no_grad():
            if self.mode == "adapter":
                ctx = inner.disable_adapter() if is_peft(inner) else contextlib.nullcontext()
                with ctx:
                    return token_logprobs(inner, inputs, labels, chunked)
            return token_logprobs(self.copy, inputs, labels, chunked)
