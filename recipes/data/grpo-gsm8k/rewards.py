"""Rewards of recipes/qwen2.5-0.5b-grpo-gsm8k.toml, in TRL's reward-function form:
f(prompts, completions, **columns) -> one float per completion (None: does not apply).

GSM8K's `answer` column ends with "#### <number>"; a completion is right when the last number
it writes (after "####" if it writes one) equals it."""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _number(text: str) -> float | None:
    tail = text.rsplit("####", 1)[-1]
    found = NUMBER.findall(tail) or NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def correct(prompts, completions, answer, **_):
    """1.0 when the completion's final number is the reference answer, else 0.0."""
    out = []
    for completion, reference in zip(completions, answer, strict=True):
        want, got = _number(reference), _number(completion)
        out.append(1.0 if want is not None and got is not None and abs(got - want) < 1e-6 else 0.0)
    return out


def formatted(prompts, completions, **_):
    """0.2 when the completion ends with a final answer line "#### <number>"."""
    return [0.2 if re.search(r"####\s*-?[\d,.]+\s*$", c.strip()) else 0.0 for c in completions]
