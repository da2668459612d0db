"""The loop's micro-batches: planned per epoch from the examples (padded, grouped or packed), or
read from a stream; collated by the objective; positioned by the loop state for exact resume."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from tune.data.batching import Batcher
from tune.train.state import LoopState


@dataclass
class StepPlan:
    """How many optimizer steps the run takes (0 per epoch when the data streams)."""

    total_steps: int
    steps_per_epoch: int
    micro_per_epoch: int


class Batches:
    """Every optimizer step's micro-batches, for this rank."""

    def __init__(self, examples: Any, objective: Any, recipe: Any, world: Any, pad_id: int):
        self.examples, self.objective, self.pad_id = examples, objective, pad_id
        train, data = recipe.train, recipe.data
        self.grad_accum = train.grad_accum
        self.reader = None
        if examples.stream is not None:
            from tune.data.stream import StreamReader

            self.reader = StreamReader(
                dataclasses.replace(examples.stream, length=objective.length),
                micro_batch_size=train.micro_batch_size,
                max_seq_len=recipe.model.max_seq_len,
                pack=data.pack,
                rank=world.rank,
                world_size=world.world_size,
            )
        self.batcher = Batcher(
            lengths=[objective.length(e) for e in examples.train],
            micro_batch_size=train.micro_batch_size,
            max_seq_len=recipe.model.max_seq_len,
            seed=train.seed,
            shuffle=data.shuffle,
            pack=data.pack,
            group_by_length=data.group_by_length,
            rank=world.rank,
            world_size=world.world_size,
        )
        self.plan = self._plan(train)

    @property
    def pack(self) -> bool:
        return self.batcher.pack

    @property
    def streaming(self) -> bool:
        return self.reader is not None

    def _plan(self, train: Any) -> StepPlan:
        if self.reader is not None:  # unknown length: max_steps is required for streaming
            return StepPlan(train.max_steps, 0, 0)
        micro = len(self.batcher.epoch(0))
        per_epoch = math.ceil(micro / self.grad_accum)
        if train.max_steps > 0:
            return StepPlan(train.max_steps, per_epoch, micro)
        # packed epochs differ slightly in bin count: count each one
        total = sum(
            math.ceil(len(self.batcher.epoch(e)) / self.grad_accum) for e in range(train.epochs)
        )
        return StepPlan(total, per_epoch, micro)

    def next_group(self, state: LoopState) -> list[list[Any]]:
        """The next optimizer step's micro-batches (a short last group ends an epoch); moves
        `state.epoch` and `state.micro_in_epoch` on."""
        accum = self.grad_accum
        if self.reader is not None:
            group = [self.reader.next_micro_batch() for _ in range(accum)]
            state.epoch = self.reader.epoch
            return group
        train = self.examples.train
        while True:
            plan = self.batcher.epoch(state.epoch)
            start = state.micro_in_epoch
            group = plan[start : start + accum]
            if group:
                state.micro_in_epoch = start + len(group)
                if state.micro_in_epoch >= len(plan):
                    state.epoch += 1
                    state.micro_in_epoch = 0
                if self.batcher.pack:  # micro-batch -> rows (bins) -> example indices
                    return [[[train[i] for i in row] for row in batch] for batch in group]
                return [[train[i] for i in idx] for idx in group]
            state.epoch += 1
            state.micro_in_epoch = 0

    def collate(self, group: list[list[Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
        """(collated micro-batches, the examples they hold) of one optimizer step."""
        objective = self.objective
        if self.batcher.pack:
            batches = [objective.collate_packed(rows, self.pad_id) for rows in group]
            examples = [e for rows in group for row in rows for e in row]
        else:
            batches = [objective.collate(examples, self.pad_id) for examples in group]
            examples = [e for micro in group for e in micro]
        return batches, examples

    def rescale(self, state: LoopState) -> None:
        """A resume with a changed plan (--resume-changed): the same share of the epoch."""
        old = state.micro_per_epoch
        if self.reader is None and old and old != self.plan.micro_per_epoch:
            share = state.micro_in_epoch / old
            state.micro_in_epoch = min(
                round(share * self.plan.micro_per_epoch), self.plan.micro_per_epoch - 1
            )

    def counts(self) -> dict[str, Any]:
        """What the stream counted (rows read, examples dropped ...), for the summary."""
        return dict(self.reader.counts) if self.reader is not None else {}

    def state_dict(self) -> dict[str, Any]:
        """What differs per rank besides the RNG: the stream's cursor."""
        return {"stream": self.reader.state_dict()} if self.reader is not None else {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if self.reader is not None:
            self.reader.load_state_dict(saved["stream"])

    def efficiency(self, tokens: int, slots: int, steps: int, world_size: int) -> float:
        """Packed: how full the bins are; padded: real tokens over positions (as planned for
        epoch 0, or measured when streaming)."""
        if self.reader is None:
            return self.batcher.efficiency(0)
        if self.batcher.pack:
            rows = steps * self.grad_accum * world_size * self.batcher.micro_batch_size
            return tokens / max(rows * self.batcher.capacity, 1)
        return tokens / max(slots, 1)
