"""`Rollout`: the object a rollout backend declares (`build=`): the engine that samples
completions during training (online RL, on-policy distillation).

The objective hands it the step's prompts as token ids and the sampling settings; it returns
the generated tokens. The engine owns how: `transformers` (the bundled default) calls the
policy's own `generate` with a KV cache, adapter active, no second copy. An engine that keeps
its own copy of the weights (vLLM, colocated) implements `sync`, called before each generation
with the policy as it is after the last optimizer step: a LoRA run sends only the adapter.
Every rank calls `generate` for its own prompts, the same number of times (parameters sharded
by ZeRO-3 or FSDP are gathered collectively). Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampling:
    """How to sample: what the objective's settings say, resolved for this step."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    # A seed for this step's sampling on this rank: the same step samples the same completions
    # after --resume. None: the global generator.
    seed: int | None = None
    # True when the model's parameters are sharded over ranks (ZeRO-3, FSDP): every rank must
    # run the same number of forwards, so each keeps stepping until all have finished.
    lockstep: bool = False


@dataclass
class Completions:
    """What `generate` returns, one entry per prompt, in order."""

    ids: list[list[int]]  # generated tokens, the end-of-sequence token included where one came
    truncated: list[bool]  # stopped at max_new_tokens without an end-of-sequence token
    # The engine's own log-probabilities of the sampled tokens, where it has them (vLLM): an
    # objective may correct for the gap between engine and policy. None: not available.
    logprobs: list[list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Rollout:
    """Base class of rollout engines. `settings`: the validated `[rollout]` keys; `ctx`: the
    run context. `generate` is the one required method."""

    def __init__(self, settings: Any = None, ctx: Any = None):
        self.settings = settings
        self.ctx = ctx

    def sync(self, model: Any) -> None:
        """Before each generation: the policy changed since the last one. An engine with its
        own copy of the weights updates it here (a LoRA run: the adapter only). Default:
        nothing (the policy itself generates)."""

    def generate(self, model: Any, prompts: list[list[int]], sampling: Sampling) -> Completions:
        """Completions of `prompts` (token ids, the generation prompt rendered) from `model`
        (the policy as the loop holds it; `ctx.strategy.unwrap(model)` is the plain model)."""
        raise NotImplementedError
