"""Greedy generations of the recipe's [generate] prompts during and after training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def generate_samples(
    model: Any,
    tokenizer: Any,
    prompts: list[tuple[str, str]],
    max_new_tokens: int,
    *,
    device: str,
    precision: Callable[[], Any],
    lockstep: bool,
    on_this_rank: bool,
    prepare: Callable[[Any], Any] | None = None,
    final: bool = True,
) -> list[dict[str, str]]:
    """[{"prompt", "reply"}] for each (prompt, rendered prompt), so the user sees what training
    did. With `lockstep` (parameters sharded) every rank generates; otherwise only where
    `on_this_rank`. At the end (`final`) the loader may switch the model to a fast inference
    mode first (`prepare`); during training the model goes back to training mode after."""
    from tune.model.generation import greedy_generate

    if not prompts or not on_this_rank:
        return []
    was_training = model.training
    model.eval()
    if prepare is not None:
        model = prepare(model)
    samples = [
        {
            "prompt": prompt,
            "reply": greedy_generate(
                model,
                tokenizer,
                rendered,
                max_new_tokens,
                device=device,
                autocast=precision(),
                **({"synced_gpus": True} if lockstep else {}),
            ),
        }
        for prompt, rendered in prompts
    ]
    model.train(was_training and not final)
    return samples
