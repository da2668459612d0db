"""Greedy generation and prompt rendering, shared by the closing samples, `tune chat` and
metrics that generate. Imports torch only inside the functions."""

from __future__ import annotations

import contextlib
from typing import Any


def text_prompt(tokenizer: Any, text: str) -> str:
    """A raw-text prompt as a document starts in training: BOS (if the tokenizer has one) + text."""
    return (tokenizer.bos_token or "") + text


def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    *,
    device: Any = None,
    autocast: Any = None,
    **generate_kwargs: Any,
) -> str:
    """The greedy continuation of `prompt` (already rendered: template or BOS applied), decoded
    without special tokens.

    `device` defaults to the model's; `autocast` is a context manager (the strategy's) or None.
    Extra keyword arguments go to `model.generate` (e.g. `synced_gpus=True` under ZeRO-3).
    """
    import torch

    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    device = device if device is not None else next(model.parameters()).device
    ids = enc["input_ids"].to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad(), autocast if autocast is not None else contextlib.nullcontext():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            **generate_kwargs,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
