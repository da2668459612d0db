"""The shared online objective of `grpo`, `rloo` and `gkd`: the data of a step is made by
the model itself (rewards are scored by `RewardScoring`, scoring.py).

The core hands each optimizer step's micro-batches of prompts to `make_step` before it counts
anything. There every rank samples `num_generations` completions of each of its prompts with
the recipe's rollout engine, scores them with the recipe's rewards, turns rewards into
advantages, and returns training micro-batches (prompt + completion ids, the completion mask,
advantages, the old and reference log-probs). The core then counts their units (completion
tokens or completions) over the whole step and every rank and normalizes the summed loss of
each micro-batch by that count: bnpo/dapo token normalization over the step's global tokens
comes from the core, as for every objective.

Log-probs come from `token_logprobs` (chunk by chunk, the [rows, length, vocab] logits never
built where that is exact). The reference is the model with its adapter disabled (LoRA), or a
frozen copy in a full fine-tune, and only when `beta` > 0.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import Field
from tune.plugin import IGNORE, Objective, Sampling, Settings, TuneError, token_logprobs

from .rollout import TransformersRollout, TransformersRolloutSettings
from .scoring import RewardScoring


class OnlineSettings(Settings):
    """Keys every online objective shares: how completions are sampled."""

    num_generations: int = Field(8, ge=1, description="completions sampled per prompt (G)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens (0: all)")
    max_completion_length: int = Field(256, gt=0, description="tokens generated at most")
    mask_truncated_completions: bool = Field(
        False, description="completions cut at max_completion_length count for nothing"
    )
    num_iterations: int = Field(
        1,
        ge=1,
        description="optimizer steps per generation batch (mu): the prompts of the steps "
        "in between are not sampled",
    )
    log_completions_every: int = Field(
        0, ge=0, description="write completions with their rewards to samples.jsonl every N steps"
    )


def _decode_meta(batch: dict[str, Any], i: int) -> dict[str, Any]:
    n = int(batch["meta_len"][i])
    return json.loads(bytes(batch["meta"][i, :n].tolist()).decode("utf-8"))


class OnlineObjective(RewardScoring, Objective):
    """Generation, rewards and batch building; subclasses give the loss."""

    unit = "completion tokens"
    needs_rewards = True
    beta_is_kl = True  # `beta` weighs a KL to the reference (gkd's weighs its JSD instead)
    settings: OnlineSettings

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        self.tokenizer: Any = None
        self.rewards: list[tuple[str, float, Any]] = []
        self.rollout: Any = None
        self.copy: Any = None  # a frozen reference (full fine-tune with beta > 0)
        self.cached: list[dict[str, Any]] | None = None
        self.iteration = 0
        self.steps = 0
        self.step_metrics: dict[str, float] = {}
        recipe = getattr(ctx, "recipe", None)
        if recipe is not None:
            self._build(recipe)

    # -- set up ----------------------------------------------------------------------------
    def _build(self, recipe: Any) -> None:
        backends = recipe.backends
        if "rollout" in backends:
            self.rollout = backends["rollout"].build(self.ctx)
        else:  # no [rollout]: this plugin's own engine, the policy's generate
            self.rollout = TransformersRollout(TransformersRolloutSettings(), self.ctx)
        seen: dict[str, int] = {}
        for entry, selected in zip(recipe.reward, backends.get("reward", []), strict=True):
            reward = selected.build(self.ctx)
            label = getattr(reward, "label", None) or entry.name  # a python reward: its function
            seen[label] = seen.get(label, 0) + 1
            key = label if seen[label] == 1 else f"{label}_{seen[label]}"
            self.rewards.append((key, entry.weight, reward))
        if self.needs_rewards and not self.rewards:
            raise TuneError(
                f"objective '{self.name}' learns from rewards, but the recipe has no [[reward]].",
                where=f"{recipe.path}: [[reward]]",
                fix='add at least one, e.g. [[reward]] name = "exact_match" column = "answer".',
            )

    @property
    def name(self) -> str:
        return type(self).__name__.removesuffix("Objective").lower()

    def prepare(self, model: Any, run: Any) -> None:
        self.tokenizer = run.tokenizer
        if self.tokenizer is None:
            raise RuntimeError("RunData.tokenizer is None: an online objective decodes completions")
        for _, _, reward in self.rewards:
            reward.prepare(run.device)
        if self.uses_reference():
            inner = self.plain(model)
            if not _is_peft(inner):
                import copy

                self.copy = copy.deepcopy(inner).requires_grad_(False).eval()

    def uses_reference(self) -> bool:
        return self.beta_is_kl and getattr(self.settings, "beta", 0.0) > 0

    def plain(self, model: Any) -> Any:
        strategy = getattr(self.ctx, "strategy", None)
        return strategy.unwrap(model) if strategy is not None else getattr(model, "module", model)

    # -- prompt batches --------------------------------------------------------------------
    def length(self, example: dict[str, Any]) -> int:
        return len(example["prompt_ids"])

    def empty_like(self, example: dict[str, Any]) -> dict[str, Any]:
        return example

    def collate(self, examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
        """Prompts left-padded, and each row as UTF-8 bytes (every value a tensor)."""
        import torch

        width = max(len(e["prompt_ids"]) for e in examples)
        ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
        metas = [e["meta"].encode("utf-8") for e in examples]
        meta = torch.zeros((len(examples), max(len(m) for m in metas)), dtype=torch.uint8)
        for i, (e, m) in enumerate(zip(examples, metas, strict=True)):
            ids[i, width - len(e["prompt_ids"]) :] = torch.tensor(e["prompt_ids"])
            meta[i, : len(m)] = torch.tensor(list(m), dtype=torch.uint8)
        lengths = torch.tensor([len(e["prompt_ids"]) for e in examples])
        return {
            "prompt_ids": ids,
            "prompt_len": lengths,
            "meta": meta,
            "meta_len": torch.tensor([len(m) for m in metas]),
        }

    def collate_packed(self, rows: list[list[dict[str, Any]]], pad_id: int) -> dict[str, Any]:
        return self.collate([e for row in rows for e in row], pad_id)

    # -- the step --------------------------------------------------------------------------
    def make_step(self, model: Any, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.cached is not None and self.iteration < self.settings.num_iterations:
            self.iteration += 1
            self.steps += 1
            return self.cached
        self.steps += 1
        self.rollout.sync(model)
        made = self.generate_step(model, batches)
        self.cached, self.iteration = made, 1
        return made

    def sampling(self) -> Sampling:
        s, tok = self.settings, self.tokenizer
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        config = getattr(getattr(self, "_model_config", None), "eos_token_id", None)
        eos |= set(config if isinstance(config, list) else [config] if config is not None else [])
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        strategy = self.ctx.recipe.selected("strategy") if self.ctx is not None else None
        lockstep = bool(strategy and strategy.capabilities.shards_parameters)
        return Sampling(
            max_new_tokens=s.max_completion_length,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            eos_token_ids=tuple(sorted(eos)),
            pad_token_id=pad,
            lockstep=lockstep and self.collectives is not None,
        )

    def generate_step(self, model: Any, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Sample, score and build the step's training micro-batches."""
        g = self.settings.num_generations
        self._model_config = getattr(self.plain(model), "generation_config", None)
        sampling = self.sampling()
        groups = []  # per micro-batch: (prompt ids, prompts, rows, completions)
        self.wheres = []  # where each prompt's row is (file and line), for messages
        for batch in batches:
            prompts_ids, prompts, rows = [], [], []
            for i in range(batch["prompt_ids"].shape[0]):
                n = int(batch["prompt_len"][i])
                ids = batch["prompt_ids"][i, batch["prompt_ids"].shape[1] - n :].tolist()
                meta = _decode_meta(batch, i)
                self.wheres.append(meta.get("where", "?"))
                for _ in range(g):
                    prompts_ids.append(ids)
                    prompts.append(meta["prompt"])
                    rows.append(meta["row"])
            done = self.rollout.generate(model, prompts_ids, sampling)
            groups.append((prompts_ids, prompts, rows, done))
        return self.build_batches(model, groups, sampling)

    def completion_texts(self, done: Any) -> list[str]:
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in done.ids]

    def advantages(self, rewards: Any, extra: dict[str, Any]) -> Any:
        raise NotImplementedError

    def build_batches(self, model: Any, groups: list, sampling: Sampling) -> list[dict]:
        import torch

        prompts = [p for grp in groups for p in grp[1]]
        rows = [r for grp in groups for r in grp[2]]
        done_ids = [ids for grp in groups for ids in grp[3].ids]
        truncated = [t for grp in groups for t in grp[3].truncated]
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in done_ids]
        table = self.score(prompts, texts, rows) if self.rewards else None
        rewards = self.rewards_of(table) if table is not None else torch.zeros(len(texts))
        batches = [
            self.training_batch(prompt_ids, done.ids, done.truncated, sampling.pad_token_id)
            for prompt_ids, _, _, done in groups
        ]
        self.with_logps(model, batches)  # old and reference log-probs: RLOO's reward needs them
        extra: dict[str, Any] = {"batches": batches}
        advantages = self.advantages(rewards, extra)
        start = 0
        for batch in batches:
            n = batch["input_ids"].shape[0]
            batch["advantages"] = advantages[start : start + n].float()
            start += n
        self.step_metrics = self.metrics_of(table, rewards, done_ids, truncated, extra)
        self.write_samples(prompts, texts, rewards, table)
        return batches

    def training_batch(self, prompt_ids, completions, truncated, pad: int) -> dict[str, Any]:
        """Left-padded prompts then right-padded completions, TRL's layout."""
        import torch

        s = self.settings
        width = max(len(p) for p in prompt_ids)
        comp = max(max((len(c) for c in completions), default=0), 1)
        rows = len(prompt_ids)
        ids = torch.full((rows, width + comp), pad, dtype=torch.long)
        attn = torch.zeros((rows, width + comp), dtype=torch.long)
        cmask = torch.zeros((rows, comp), dtype=torch.long)
        for i, (p, c) in enumerate(zip(prompt_ids, completions, strict=True)):
            ids[i, width - len(p) : width] = torch.tensor(p)
            attn[i, width - len(p) : width] = 1
            if c:
                ids[i, width : width + len(c)] = torch.tensor(c)
                attn[i, width : width + len(c)] = 1
                cmask[i, : len(c)] = 1
        if s.mask_truncated_completions:
            keep = torch.tensor([not t for t in truncated], dtype=torch.long)
            cmask = cmask * keep[:, None]
            attn[:, width:] = attn[:, width:] * keep[:, None]
        return {
            "input_ids": ids,
            "attention_mask": attn,
            "completion_mask": cmask,
            "truncated": torch.tensor(truncated, dtype=torch.bool),
        }

    # -- log-probs -------------------------------------------------------------------------
    def completion_logps(self, model: Any, batch: dict[str, Any], chunked: bool = True) -> Any:
        """Per-token log-probs of the completion tokens, [rows, completion width]."""
        comp = batch["completion_mask"].shape[1]
        width = batch["input_ids"].shape[1] - comp
        labels = batch["input_ids"].clone()
        labels[:, :width] = IGNORE
        labels[:, width:][batch["completion_mask"] == 0] = IGNORE
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        t = self.settings.temperature
        if t == 1.0:
            per_token = token_logprobs(model, inputs, labels, chunked)
            return per_token[:, width - 1 : width - 1 + comp].float()
        return self._tempered_logps(model, inputs, labels, width, comp, t)

    def _tempered_logps(self, model, inputs, labels, width: int, comp: int, t: float) -> Any:
        """log_softmax(logits / temperature) of the completion tokens (TRL's definition):
        `token_logprobs` has no temperature, so the logits of the completion positions only
        are built here (`logits_to_keep`), one row at a time."""
        import torch

        out = []
        for r in range(inputs["input_ids"].shape[0]):
            row = {k: v[r : r + 1] for k, v in inputs.items()}
            logits = model(**row, use_cache=False, logits_to_keep=comp + 1).logits[:, :-1]
            logp = torch.log_softmax(logits.float() / t, dim=-1)
            target = labels[r : r + 1, width:].clamp(min=0)
            picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            out.append(picked * (labels[r : r + 1, width:] != IGNORE))
        return torch.cat(out)

    def reference_logps(self, model: Any, batch: dict[str, Any]) -> Any:
        import contextlib

        inner = self.plain(model)
        if self.copy is not None:
            return self.completion_logps(self.copy, batch)
        off = inner.disable_adapter() if _is_peft(inner) else contextlib.nullcontext()
        with off:
            return self.completion_logps(inner, batch)

    def needs_old_logps(self) -> bool:
        """Old-policy log-probs are needed when a generation batch is reused."""
        return self.settings.num_iterations > 1

    def with_logps(self, model: Any, batches: list[dict[str, Any]]) -> None:
        """Old-policy (when `needs_old_logps`) and reference log-probs, without grad."""
        import torch

        strategy = getattr(self.ctx, "strategy", None)
        device = getattr(getattr(self.ctx, "world", None), "device", "cpu")
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad(), strategy.autocast(self.ctx) if strategy else _null():
                if self.needs_old_logps():
                    batch["old_logps"] = self.completion_logps(model, inputs).cpu()
                if self.uses_reference():
                    batch["ref_logps"] = self.reference_logps(model, inputs).cpu()

    # -- metrics and samples ---------------------------------------------------------------
    def metrics_of(self, table, rewards, done_ids, truncated, extra) -> dict[str, float]:
        """The step's metrics over every rank (the same value on each), as TRL names them."""
        c = self.collectives
        out: dict[str, float] = {}
        n = c.all_reduce_sum(float(len(done_ids)))
        lengths = [len(ids) for ids in done_ids] or [0]
        out["completions/mean_length"] = c.all_reduce_sum(float(sum(lengths))) / max(n, 1)
        out["completions/min_length"] = c.all_reduce_min(float(min(lengths)))
        out["completions/max_length"] = c.all_reduce_max(float(max(lengths)))
        out["completions/clipped_ratio"] = c.all_reduce_sum(float(sum(truncated))) / max(n, 1)
        if table is not None:
            for j, (key, _, _) in enumerate(self.rewards):
                out[f"rewards/{key}/mean"] = self._mean(table[:, j])
            out["reward"] = self._mean(rewards)
            out["reward_std"] = self._std(rewards)
        for key, value in extra.get("metrics", {}).items():
            out[key] = value
        return out

    def _mean(self, x: Any) -> float:
        import torch

        ok = ~torch.isnan(x)
        total = self.collectives.all_reduce_sum(float(x[ok].sum()))
        return total / max(self.collectives.all_reduce_sum(float(ok.sum())), 1.0)

    def _std(self, x: Any) -> float:
        import torch

        ok = ~torch.isnan(x)
        c = self.collectives
        n = c.all_reduce_sum(float(ok.sum()))
        s1 = c.all_reduce_sum(float(x[ok].double().sum()))
        s2 = c.all_reduce_sum(float((x[ok].double() ** 2).sum()))
        if n < 2:
            return 0.0
        return math.sqrt(max((s2 - s1 * s1 / n) / (n - 1), 0.0))

    def write_samples(self, prompts, texts, rewards, table) -> None:
        every = self.settings.log_completions_every
        ctx = self.ctx
        if not every or self.steps % every or ctx is None or not ctx.world.is_main:
            return
        samples = []
        for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
            sample = {"prompt": prompt if isinstance(prompt, str) else json.dumps(prompt)}
            sample["reply"] = text
            sample["reward"] = None if math.isnan(float(rewards[i])) else float(rewards[i])
            if table is not None:
                sample["rewards"] = {
                    key: None if math.isnan(float(table[i, j])) else float(table[i, j])
                    for j, (key, _, _) in enumerate(self.rewards)
                }
            samples.append(sample)
        ctx.metrics.samples(self.steps, samples)

    def step_pairs(self) -> dict[str, tuple[float, float]]:
        """The step's metrics as (value, 1) pairs: each micro-batch of each rank reports the
        same global value, whose mean is that value."""
        return {k: (v, 1.0) for k, v in self.step_metrics.items()}


def _null():
    import contextlib

    return contextlib.nullcontext()


def _is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def torch_zeros(n: int) -> Any:
    import torch

    return torch.zeros(n)
