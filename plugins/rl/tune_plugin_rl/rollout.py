"""Rollout `transformers`: the policy samples its own completions with `model.generate`.

Batched, left-padded prompts, a KV cache, the adapter active: the very model being trained
generates, so there is no second copy to keep in sync. The strategy's wrapper is taken off
(`ctx.strategy.unwrap`) and generation runs under its autocast. Where the parameters are
sharded over ranks (ZeRO-3, FSDP2), every rank keeps stepping until all have finished
(`synced_gpus`), so the collective gathers of each forward stay matched; DeepSpeed gathers each
layer's parameters as its forward runs. The sampling settings are passed as a whole
`GenerationConfig`, so a model's own generation defaults (a Qwen top_k) never leak in.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import Field
from tune.plugin import Completions, Rollout, Sampling, Settings


class TransformersRolloutSettings(Settings):
    """Keys of [rollout] for name = "transformers"."""

    batch_size: int = Field(
        0, ge=0, description="sequences per generate call (0: all of a micro-batch at once)"
    )


class TransformersRollout(Rollout):
    """Sampling with the policy's own `generate`."""

    def plain(self, model: Any) -> Any:
        strategy = getattr(self.ctx, "strategy", None)
        return strategy.unwrap(model) if strategy is not None else model

    def autocast(self) -> Any:
        strategy = getattr(self.ctx, "strategy", None)
        return strategy.autocast(self.ctx) if strategy is not None else contextlib.nullcontext()

    def generate(self, model: Any, prompts: list[list[int]], sampling: Sampling) -> Completions:
        import torch
        from transformers import GenerationConfig

        inner = self.plain(model)
        device = next(inner.parameters()).device
        config = GenerationConfig(
            do_sample=sampling.temperature > 0,
            temperature=sampling.temperature if sampling.temperature > 0 else 1.0,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=list(sampling.eos_token_ids) or None,
            pad_token_id=sampling.pad_token_id,
            use_cache=True,
        )
        size = self.settings.batch_size or len(prompts)
        ids_out: list[list[int]] = []
        truncated: list[bool] = []
        eos = set(sampling.eos_token_ids)
        was_training = inner.training
        inner.eval()
        try:
            for start in range(0, len(prompts), size):
                chunk = prompts[start : start + size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), sampling.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, p in enumerate(chunk):
                    ids[i, width - len(p) :] = torch.tensor(p)
                    mask[i, width - len(p) :] = 1
                extra = {"synced_gpus": True} if sampling.lockstep else {}
                with torch.no_grad(), self.autocast():
                    out = inner.generate(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        generation_config=config,
                        **extra,
                    )
                for row in out[:, width:].tolist():
                    cut = next((j for j, t in enumerate(row) if t in eos), None)
                    ids_out.append(row[: cut + 1] if cut is not None else row)
                    truncated.append(cut is None)
        finally:
            inner.train(was_training)
        return Completions(ids_out, truncated)
