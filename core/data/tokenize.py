"""Turn normalized rows into token ids and labels, with prompt masking and truncation."""

from __future__ import annotations

from typing import Any

from tune.data.examples import IGNORE
from tune.data.templates import assistant_spans, base_eos_id


def tokenize_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    train_on_prompt: bool,
    where: str,
    tools: list | None = None,
) -> dict[str, list[int]]:
    """Tokens of the rendered chat; labels only on assistant replies (tool calls included, tool
    results not) unless train_on_prompt. `tools` reaches the template as `tools=`."""
    text, spans = assistant_spans(tokenizer, messages, where, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if train_on_prompt:
        labels = list(ids)
    else:
        labels = [IGNORE] * len(ids)
        span_iter = iter(spans)
        span = next(span_iter, None)
        for i, (start, end) in enumerate(enc["offset_mapping"]):
            while span is not None and start >= span[1]:
                span = next(span_iter, None)
            if span is not None and start >= span[0] and end <= span[1] and end > start:
                labels[i] = ids[i]
    if labels:
        labels[0] = IGNORE  # never a target; also keeps packed examples from predicting across
    return {"input_ids": ids, "labels": labels}


def tokenize_pair(
    tokenizer: Any, prompt: str, completion: str, train_on_prompt: bool, add_eos: bool
) -> dict[str, list[int]]:
    """Plain prompt + completion (no template): BOS prompt completion EOS."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos_id = base_eos_id(tokenizer)
    eos = [eos_id] if add_eos and eos_id is not None else []
    p = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + eos
    labels = (list(p) if train_on_prompt else [IGNORE] * len(p)) + list(c)
    if labels:
        labels[0] = IGNORE
    return {"input_ids": p + c, "labels": labels}


def sliding_windows(ids: list[int], max_len: int, stride: int) -> list[dict[str, list[int]]]:
    """Overlapping windows over one long token list; every token is a target exactly once.

    Windows start every `stride` tokens. In each window after the first, the tokens the previous
    window already trained on are context only (label IGNORE), so nothing is counted twice.
    """
    windows = []
    trained_until = 0  # tokens [0, trained_until) are already targets (or the first token)
    for start in range(0, len(ids), stride):
        end = min(start + max_len, len(ids))
        window = ids[start:end]
        labels = [
            tok if start + i >= max(trained_until, 1) else IGNORE for i, tok in enumerate(window)
        ]
        labels[0] = IGNORE  # the first token of a window has no context inside it
        windows.append({"input_ids": window, "labels": labels})
        trained_until = end
        if end == len(ids):
            break
    return windows
