"""How an epoch of examples becomes this rank's micro-batches: padded, length-grouped or packed.

Every plan is a pure function of (seed, epoch, rank, world size), so `--resume` replays it and
all ranks agree on it without talking. Packing is padding-free: a packed micro-batch is one row
whose position ids restart at every example; transformers turns that into a block-diagonal
causal mask (SDPA/eager) or varlen attention (flash-attention), so no example sees another.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from tune.data.examples import IGNORE, epoch_order

GROUP_CHUNK = 64  # length grouping sorts within chunks of this many micro-batches


def pack_first_fit(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit: each example goes into the first bin with room, else opens a new one."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        size = min(lengths[index], capacity)
        for b, free in enumerate(room):
            if free >= size:
                bins[b].append(index)
                room[b] -= size
                break
        else:
            bins.append([index])
            room.append(capacity - size)
    return bins


def group_by_length(
    order: list[int], lengths: list[int], micro_batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Micro-batches of similar lengths (less padding), in a shuffled order of micro-batches."""
    chunk = micro_batch_size * GROUP_CHUNK
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        batches += [part[i : i + micro_batch_size] for i in range(0, len(part), micro_batch_size)]
    rng.shuffle(batches)
    return batches


def share(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """This rank's items, padded by wrapping so every rank gets the same count."""
    if world_size == 1 or not items:
        return items
    per_rank = math.ceil(len(items) / world_size)
    padded = (items * math.ceil(per_rank * world_size / len(items)))[: per_rank * world_size]
    return padded[rank::world_size]


@dataclass
class Batcher:
    """Plans the micro-batches of each epoch for one rank (cached: plans are reused per step)."""

    lengths: list[int]
    micro_batch_size: int
    max_seq_len: int
    seed: int
    shuffle: bool = True
    pack: bool = False
    group_by_length: bool = False
    rank: int = 0
    world_size: int = 1
    _plans: dict[int, list[list[int]]] = field(default_factory=dict, repr=False)

    @property
    def capacity(self) -> int:
        """Tokens per packed row (bin); a packed micro-batch holds micro_batch_size rows."""
        return self.max_seq_len

    def epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            self._plans = {epoch: self._plan(epoch)}  # keep one: epochs are visited in order
        return self._plans[epoch]

    def _plan(self, epoch: int) -> list[list[int]]:
        order = epoch_order(len(self.lengths), self.seed, epoch, self.shuffle)
        if self.pack:
            bins = pack_first_fit(order, self.lengths, self.capacity)
            random.Random(self.seed * 7919 + epoch).shuffle(bins)  # bins in random order too
            size = self.micro_batch_size
            batches = [bins[i : i + size] for i in range(0, len(bins), size)]
        elif self.group_by_length:
            batches = group_by_length(
                order, self.lengths, self.micro_batch_size, random.Random(self.seed + epoch)
            )
        else:
            batches = [
                order[i : i + self.micro_batch_size]
                for i in range(0, len(order), self.micro_batch_size)
            ]
        return share(batches, self.rank, self.world_size)

    def efficiency(self, epoch: int = 0) -> float:
        """Real tokens / token slots: bin fill when packing, non-padding share when padding."""
        plan = self._plan(epoch) if self.world_size == 1 else self.epoch(epoch)
        if self.pack:
            bins = [b for batch in plan for b in batch]
            real = sum(min(self.lengths[i], self.capacity) for b in bins for i in b)
            slots = len(bins) * self.capacity
        else:
            real = sum(self.lengths[i] for batch in plan for i in batch)
            slots = sum(len(batch) * max(self.lengths[i] for i in batch) for batch in plan)
        return real / max(slots, 1)


def collate_packed(rows: list[list[dict[str, list[int]]]], pad_id: int) -> dict[str, Any]:
    """Padding-free rows: each row's examples end to end, position ids restarting at each one.

    No attention mask: transformers reads the restarting position ids as sequence boundaries
    (block-diagonal causal attention, or varlen flash-attention). Rows shorter than the longest
    are topped up with a pad "sequence" of their own that has no targets.
    """
    import torch

    width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example["input_ids"])
            ids[r, at : at + n] = torch.tensor(example["input_ids"])
            labels[r, at + 1 : at + n] = torch.tensor(
                example["labels"][1:]
            )  # never across a boundary
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}
