"""`Reward`: the object a reward backend declares (`build=`). Online RL scores completions.

An online objective (GRPO, RLOO) samples completions of each prompt during training and asks
every `[[reward]]` of the recipe for one float per completion; their weighted sum is the reward
the objective learns from, and each is logged on its own (`reward/<name>`). A reward sees the
text (prompt and completion, decoded without special tokens) and the prompt's row: the other
columns of the data (an `answer`, test cases ...), so checking a completion needs no tokenizer.
Imports no torch.
"""

from __future__ import annotations

from typing import Any


class Reward:
    """Base class of rewards. `settings` are the validated keys of its `[[reward]]` table (the
    core's `name` and `weight` aside); `ctx` is the run context.

    `score` is the one required method. Return one value per completion, in order: a float, or
    None where this reward does not apply to that completion (it then counts for nothing in
    the weighted sum; a completion no reward applies to gets no advantage). Raise `TuneError`
    for a user mistake (a missing column): the objective names the reward and the prompt.
    """

    def __init__(self, settings: Any = None, ctx: Any = None):
        self.settings = settings
        self.ctx = ctx

    def prepare(self, device: str) -> None:
        """Once, before the first step, on every rank: load what scoring needs (a reward
        model on `device`). Default: nothing."""

    def score(
        self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]
    ) -> list[float | None]:
        """One reward per completion. `prompts[i]` is the rendered prompt of completion `i`,
        `rows[i]` its data row (every column, e.g. `rows[i]["answer"]`)."""
        raise NotImplementedError
