"""Several training sources in one run: `[data]` itself plus each `[[data.mix]]` table.

Each source goes through its own format plugin as if it were the only one (the plugin sees a
recipe whose `[data]` names just that source), and the training examples are concatenated; the
batcher's shuffle then mixes them. Eval data comes from `[data]` only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from tune.context import RunContext
from tune.data.examples import Examples
from tune.recipe import Selected


def sources(ctx: RunContext) -> Iterator[tuple[Selected, RunContext]]:
    """(format backend, context seen by it) for `[data]` and then each `[[data.mix]]` source."""
    recipe = ctx.recipe
    yield recipe.selected("data_format"), ctx
    for src, selected in zip(recipe.data.mix, recipe.backends.get("data_mix", []), strict=True):
        data = recipe.data.model_copy(
            update={
                "format": src.format,
                "train": src.train,
                "eval": None,
                "eval_fraction": 0.0,
                "mix": [],
            }
        )
        yield selected, dataclasses.replace(ctx, recipe=dataclasses.replace(recipe, data=data))


def format_all(pm: Any, tokenizer: Any, ctx: RunContext) -> Examples:
    """Tokenized examples of every source; stats add up, per-source counts under `sources`."""
    from tune.train.run import call_backend

    parts = [
        call_backend(pm, "tune_format_data", selected, tokenizer=tokenizer, ctx=source_ctx)
        for selected, source_ctx in sources(ctx)
    ]
    if len(parts) == 1:
        return parts[0]
    main = parts[0]
    stats: dict[str, Any] = dict(main.stats)
    for part in parts[1:]:
        for key, value in part.stats.items():
            if isinstance(value, int) and isinstance(stats.get(key), int):
                stats[key] += value
    caches = {part.stats.get("cache", "off") for part in parts}
    stats["cache"] = caches.pop() if len(caches) == 1 else "partial"
    stats["sources"] = [len(part.train) for part in parts]
    train = [example for part in parts for example in part.train]
    return dataclasses.replace(main, train=train, stats=stats)


def validate_all(pm: Any, ctx: RunContext) -> str:
    """Each source's one-line data check (no tokenizer, no torch), joined."""
    lines = [
        (
            selected.backend.name,
            pm.caller("tune_validate_data", selected.backend)(
                name=selected.backend.name, settings=selected.settings, ctx=source_ctx
            ),
        )
        for selected, source_ctx in sources(ctx)
    ]
    if len(lines) == 1:
        return lines[0][1]
    return "; ".join(f"{name}: {line}" for name, line in lines)
