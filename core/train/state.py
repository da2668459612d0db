"""`LoopState`: where the loop is, typed; saved in every checkpoint's state.json and restored."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoopState:
    """The loop's position and what early stopping and the summary need across a resume."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of `epoch` already trained (this rank's plan)
    tokens: int = 0  # real tokens trained by this rank, resumes included
    best_eval: float | None = None
    bad_evals: int = 0  # evals in a row without improving best_eval
    first_loss: float | None = None
    last_loss: float | None = None
    micro_per_epoch: int = 0  # the plan's size when saved (a resume with changes rescales)
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)  # each tracker's state()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> LoopState:
        """The state a checkpoint saved; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})
