"""Rewards of an online step: calling every [[reward]] on the step's completions, checking
what each returns, and the one-paragraph errors that name the reward, the prompt and the fix.

A mixin of `OnlineObjective` (it reads `settings.num_generations`, `rewards`, `ctx` and
`wheres`), kept apart so the generation and batch code does not carry the error wording.
"""

from __future__ import annotations

import math
from typing import Any

from tune.plugin import TuneError


class RewardScoring:
    """Scores completions with the recipe's rewards; a bad reward stops the run cleanly."""

    settings: Any
    ctx: Any
    rewards: list[tuple[str, float, Any]]

    def score(self, prompts: list[Any], completions: list[str], rows: list[dict]) -> Any:
        """[completions, rewards] of every reward, NaN where one does not apply; a reward
        that raises or answers wrongly stops the run with one paragraph naming it."""
        import torch

        table = torch.full((len(completions), len(self.rewards)), float("nan"))
        for j, (key, _, reward) in enumerate(self.rewards):
            try:
                values = reward.score(prompts, completions, rows)
            except TuneError:
                raise
            except Exception as exc:
                index, exc = self._culprit(reward, prompts, completions, rows, exc)
                raise TuneError(
                    f"reward '{key}' raised {type(exc).__name__}: {exc} on prompt {index} of "
                    f"this step (rank {self._rank()}{self._row(index)}).",
                    where=self._reward_where(key, reward),
                    fix="make the function return one float per completion for any text the "
                    "model may write (catch what can fail and return 0.0 or None).",
                ) from None
            values = self._check_values(key, reward, values, prompts, completions)
            table[:, j] = torch.tensor(values, dtype=torch.float32)
        return table

    def _culprit(self, reward, prompts, completions, rows, exc) -> tuple[Any, Exception]:
        """The first prompt whose completions alone make the reward raise (it was called on
        all at once), and that error; "?" when none does alone."""
        g = self.settings.num_generations
        for start in range(0, len(completions), g):
            part = slice(start, start + g)
            try:
                reward.score(prompts[part], completions[part], rows[part])
            except Exception as alone:
                return start // g, alone
        return "?", exc

    def _row(self, index: Any) -> str:
        wheres = getattr(self, "wheres", [])
        return f", row {wheres[index]}" if isinstance(index, int) and index < len(wheres) else ""

    def _prompt_span(self, prompts: list[Any]) -> str:
        g = self.settings.num_generations
        return f"0-{max(len(prompts) // g - 1, 0)} of this step (rank {self._rank()})"

    def _rank(self) -> int:
        return getattr(getattr(self.ctx, "world", None), "rank", 0)

    def _reward_where(self, key: str, reward: Any) -> str:
        path = getattr(getattr(self.ctx, "recipe", None), "path", "recipe")
        fn = getattr(getattr(reward, "settings", None), "function", None)
        return f"{path}: [[reward]] {key}" + (f" (function {fn})" if fn else "")

    def _check_values(self, key, reward, values, prompts, completions) -> list[float]:
        g = self.settings.num_generations
        where = self._reward_where(key, reward)
        if not isinstance(values, list | tuple) or len(values) != len(completions):
            got = (
                f"{len(values)} values"
                if isinstance(values, list | tuple)
                else (f"a {type(values).__name__}")
            )
            raise TuneError(
                f"reward '{key}' returned {got} for {len(completions)} completions (prompts "
                f"{self._prompt_span(prompts)}).",
                where=where,
                fix="return a list with one float (or None) per completion, in order.",
            )
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(float("nan"))
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                try:
                    import numbers

                    ok = isinstance(v, numbers.Real) or (hasattr(v, "item") and v.numel() == 1)
                except Exception:
                    ok = False
                if not ok or isinstance(v, bool):
                    raise TuneError(
                        f"reward '{key}' returned {v!r} ({type(v).__name__}) for completion "
                        f"{i % g} of prompt {i // g} of this step (rank {self._rank()}"
                        f"{self._row(i // g)}), not a number.",
                        where=where,
                        fix="return a float (or None where the reward does not apply).",
                    )
                v = float(v.item() if hasattr(v, "item") else v)
            if not math.isfinite(float(v)):
                raise TuneError(
                    f"reward '{key}' returned {v} for completion {i % g} of prompt {i // g} of "
                    f"this step (rank {self._rank()}{self._row(i // g)}): not a finite number. "
                    "Completion: "
                    f"{completions[i][:200]!r}.",
                    where=where,
                    fix="return a finite float (or None where the reward does not apply).",
                )
            out.append(float(v))
        return out

    def rewards_of(self, table: Any) -> Any:
        """The weighted sum of the rewards; NaN where none applied."""
        import torch

        weights = torch.tensor([w for _, w, _ in self.rewards], dtype=torch.float32)
        total = (table * weights).nansum(dim=1)
        total[torch.isnan(table).all(dim=1)] = float("nan")
        return total
