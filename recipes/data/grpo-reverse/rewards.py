"""Rewards of recipes/quickstart-grpo.toml (TRL's reward-function form: f(prompts,
completions, **columns) -> one float per completion).

Two parts, each logged on its own (`rewards/letters/mean`, `rewards/lowercase/mean`): `letters`
is the task, a shaped, verifiable score of a reversal (the share of the answer's positions the
completion gets right); `lowercase` is a format reward (the share of the completion written in
lowercase letters), weighted 0.25 in the recipe. Both are dense enough for a model that starts
from random weights to find signal in its own samples."""

from __future__ import annotations


def letters(prompts, completions, answer, **_):
    out = []
    for text, want in zip(completions, answer, strict=True):
        got = text.strip()
        out.append(sum(1 for a, b in zip(got, want, strict=False) if a == b) / len(want))
    return out


def lowercase(prompts, completions, **_):
    return [
        sum(ch.islower() for ch in text.strip()) / max(len(text.strip()), 1) for text in completions
    ]
