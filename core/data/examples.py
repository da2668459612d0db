"""Tokenized examples and how they become padded micro-batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IGNORE = -100


@dataclass
class Examples:
    """The run's tokenized data: every source's train examples, the eval examples, counts.

    An "lm" example is `{"input_ids": [...], "labels": [...]}` (labels IGNORE where nothing is
    trained); other example kinds carry what their objective needs.
    """

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]] = field(default_factory=list)
    # How a user prompt is shown to the model for the closing sample generation.
    render_prompt: Callable[[str], str] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    # Set instead of `train` when [data] streaming = true: a `tune.data.stream.RowStream`.
    stream: Any = None


def target_count(example: dict[str, list[int]]) -> int:
    """Tokens that are predicted and scored: labels shifted by one, IGNORE excluded."""
    return sum(1 for label in example["labels"][1:] if label != IGNORE)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The example order of one epoch: a pure function of (seed, epoch), so resume can replay it."""
    if not shuffle:
        return list(range(n))
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors; padding has attention 0 and label IGNORE."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
