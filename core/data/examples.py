"""Tokenized examples and how they become padded micro-batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

IGNORE = -100


@dataclass
class Examples:
    """What a data format returns: token ids with labels (IGNORE = not trained)."""

    train: list[dict[str, list[int]]]
    eval: list[dict[str, list[int]]] = field(default_factory=list)
    # How a user prompt is shown to the model for the closing sample generation.
    render_prompt: Callable[[str], str] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    # Set instead of `train` when [data] streaming = true: files and a per-row encoder.
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


def shard(order: list[int], rank: int, world_size: int, micro_batch_size: int) -> list[int]:
    """This rank's share; padded by wrapping so every rank runs the same number of micro-batches."""
    if world_size == 1:
        return order
    per_rank = math.ceil(len(order) / (world_size * micro_batch_size)) * micro_batch_size
    total = per_rank * world_size
    padded = (order * math.ceil(total / max(len(order), 1)))[:total]
    return padded[rank::world_size]


def micro_batches(indices: list[int], micro_batch_size: int) -> list[list[int]]:
    return [indices[i : i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]


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


def iterate_batches(
    examples: list[dict[str, list[int]]], batch_size: int, pad_id: int
) -> Iterator[dict[str, Any]]:
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size], pad_id)
