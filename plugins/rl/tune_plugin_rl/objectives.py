"""Objectives `grpo`, `rloo` and `gkd` and their [objective] keys: each gives its advantages
and its loss; generation, rewards and batch building are `OnlineObjective`'s (online.py)."""

from __future__ import annotations

import math
import random
from typing import Any, Literal

from pydantic import Field, model_validator
from tune.plugin import LossOutput, TuneError

from .losses import generalized_jsd, group_advantages, grpo_loss, nanstd, rloo_advantages, rloo_loss
from .online import OnlineObjective, OnlineSettings, _decode_meta, torch_zeros


class GRPOSettings(OnlineSettings):
    """Keys of [objective] for `grpo` (TRL's GRPOConfig names and defaults)."""

    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo", description="grpo, bnpo, dr_grpo or dapo normalization"
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="token (GRPO) or sequence (GSPO) importance weights"
    )
    epsilon: float = Field(0.2, gt=0, description="lower clipping range")
    epsilon_high: float | None = Field(None, gt=0, description="upper range (default epsilon)")
    delta: float | None = Field(None, gt=1, description="two-sided clipping bound of the ratio")
    beta: float = Field(0.0, ge=0, description="KL penalty to the reference (0: no reference)")
    use_bias_correction_kl: bool = Field(
        True, description="multiply the KL by the importance ratio (unbiased reverse-KL gradient)"
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="divide advantages by the group's, the batch's, or no std"
    )

    @model_validator(mode="after")
    def _groups(self):
        if self.num_generations < 2:
            raise ValueError("num_generations must be at least 2: advantages compare a group")
        return self


class RLOOSettings(OnlineSettings):
    """Keys of [objective] for `rloo` (TRL's RLOOConfig names and defaults)."""

    epsilon: float = Field(0.2, gt=0, description="lower clipping range")
    epsilon_high: float | None = Field(None, gt=0, description="upper range (default epsilon)")
    beta: float = Field(
        0.05, ge=0, description="sequence KL to the reference, subtracted from the reward"
    )
    normalize_advantages: bool = Field(False, description="standardize advantages per batch")

    @model_validator(mode="after")
    def _groups(self):
        if self.num_generations < 2:
            raise ValueError("num_generations must be at least 2: the baseline is the others")
        return self


class GKDSettings(OnlineSettings):
    """Keys of [objective] for `gkd`: on-policy distillation from a teacher."""

    teacher: str = Field(description="the teacher model: hub id or local folder (same tokenizer)")
    beta: float = Field(0.5, ge=0, le=1, description="generalized JSD interpolation (0: KL)")
    lmbda: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of steps on student samples; the rest use the row's `completion` column",
    )
    num_generations: int = Field(1, ge=1, description="completions sampled per prompt")
    trust_remote_code: bool = False


class GRPOObjective(OnlineObjective):
    """Group relative policy optimization and its variants (DAPO, Dr. GRPO, BNPO, GSPO)."""

    settings: GRPOSettings

    @property
    def unit(self) -> str:  # type: ignore[override]
        tokens = self.settings.loss_type in ("bnpo", "dapo")
        return "completion tokens" if tokens else "completions"

    def count(self, batch: dict[str, Any]) -> int:
        if self.settings.loss_type in ("bnpo", "dapo"):
            return int(batch["completion_mask"].sum())
        return int(batch["completion_mask"].shape[0])

    def positions(self, batch: dict[str, Any]) -> int:
        return batch["input_ids"].numel()

    def advantages(self, rewards: Any, extra: dict[str, Any]) -> Any:
        s = self.settings
        batch_std = None
        if s.scale_rewards == "batch":
            import torch

            ok = ~torch.isnan(rewards)
            c = self.collectives
            n = c.all_reduce_sum(float(ok.sum()))
            s1 = c.all_reduce_sum(float(rewards[ok].double().sum()))
            s2 = c.all_reduce_sum(float((rewards[ok].double() ** 2).sum()))
            batch_std = math.sqrt(max((s2 - s1 * s1 / n) / (n - 1), 0.0)) if n > 1 else 0.0
        adv, _ = group_advantages(rewards, s.num_generations, s.scale_rewards, batch_std)
        grouped = rewards.view(-1, s.num_generations)
        std = nanstd(grouped, dim=1)
        zero = float((std.nan_to_num(0.0) < 1e-8).float().sum())
        extra.setdefault("metrics", {})["frac_reward_zero_std"] = self.collectives.all_reduce_sum(
            zero
        ) / max(self.collectives.all_reduce_sum(float(std.numel())), 1.0)
        return adv

    def loss(self, model: Any, batch: dict[str, Any]) -> LossOutput:
        s = self.settings
        logps = self.completion_logps(model, batch)
        mask = batch["completion_mask"]
        out = grpo_loss(
            logps,
            batch.get("old_logps"),
            batch.get("ref_logps"),
            batch["advantages"],
            mask,
            loss_type=s.loss_type,
            level=s.importance_sampling_level,
            epsilon_low=s.epsilon,
            epsilon_high=s.epsilon_high if s.epsilon_high is not None else s.epsilon,
            beta=s.beta,
            delta=s.delta,
            max_completion_length=s.max_completion_length,
            bias_correction_kl=s.use_bias_correction_kl,
        )
        metrics: dict[str, Any] = dict(out.metrics)
        if s.beta == 0:
            metrics.pop("kl", None)
        m = mask.to(logps.dtype)
        # The entropy of the policy at the sampled tokens, estimated by their mean negative
        # log-probability (exact in expectation; no full-vocabulary logits needed).
        metrics["entropy"] = (float(-(logps.detach() * m).sum()), float(m.sum()))
        metrics.update(self.step_pairs())
        return LossOutput(out.loss, metrics)


class RLOOObjective(OnlineObjective):
    """REINFORCE leave-one-out with a clipped sequence-level ratio (TRL's RLOOTrainer)."""

    settings: RLOOSettings
    unit = "completions"

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["completion_mask"].shape[0])

    def needs_old_logps(self) -> bool:
        """RLOO always needs the old sequence log-probs (its KL term uses them)."""
        return True

    def advantages(self, rewards: Any, extra: dict[str, Any]) -> Any:
        import torch

        s = self.settings
        batches = extra["batches"]
        if s.beta > 0:
            kl = torch.cat(
                [
                    ((b["old_logps"] - b["ref_logps"]) * b["completion_mask"]).sum(-1)
                    for b in batches
                ]
            )
            rewards = rewards - s.beta * kl
            tokens = sum(float(b["completion_mask"].sum()) for b in batches)
            c = self.collectives
            extra.setdefault("metrics", {})["kl"] = c.all_reduce_sum(float(kl.sum())) / max(
                c.all_reduce_sum(tokens), 1.0
            )
        return rloo_advantages(rewards, s.num_generations, s.normalize_advantages)

    def loss(self, model: Any, batch: dict[str, Any]) -> LossOutput:
        s = self.settings
        logps = self.completion_logps(model, batch)
        mask = batch["completion_mask"]
        old = batch["old_logps"] if s.num_iterations > 1 else None
        out = rloo_loss(
            logps,
            old,
            batch["advantages"],
            mask,
            epsilon_low=s.epsilon,
            epsilon_high=s.epsilon_high if s.epsilon_high is not None else s.epsilon,
        )
        m = mask.to(logps.dtype)
        metrics: dict[str, Any] = dict(out.metrics)
        metrics["entropy"] = (float(-(logps.detach() * m).sum()), float(m.sum()))
        metrics.update(self.step_pairs())
        return LossOutput(out.loss, metrics)


class GKDObjective(OnlineObjective):
    """On-policy distillation: the student samples, the teacher scores every token of the
    completion, and the loss is the generalized JSD between their next-token distributions
    (Agarwal et al., 2024; TRL's GKDTrainer). The divergence needs whole distributions, so
    the logits of the completion positions are built (`logits_to_keep`), one row at a time
    for the teacher."""

    settings: GKDSettings
    needs_rewards = False
    beta_is_kl = False  # beta interpolates the JSD; no reference model

    def __init__(self, settings: Any = None, ctx: Any = None):
        super().__init__(settings, ctx)
        self.teacher: Any = None
        self.rng = random.Random(
            getattr(getattr(getattr(ctx, "recipe", None), "train", None), "seed", 0)
        )

    def prepare(self, model: Any, run: Any) -> None:
        super().prepare(model, run)
        from transformers import AutoModelForCausalLM

        s = self.settings
        self.teacher = AutoModelForCausalLM.from_pretrained(
            s.teacher, trust_remote_code=s.trust_remote_code
        ).to(run.device)
        self.teacher.eval().requires_grad_(False)

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["completion_mask"].sum())

    def generate_step(self, model: Any, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.rng.random() < self.settings.lmbda:
            return super().generate_step(model, batches)
        return self.dataset_step(batches)

    def dataset_step(self, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Off-policy steps (lmbda < 1): the rows' own `completion` column."""
        out = []
        pad = self.sampling().pad_token_id
        for batch in batches:
            prompt_ids, completions, truncated = [], [], []
            for i in range(batch["prompt_ids"].shape[0]):
                n = int(batch["prompt_len"][i])
                meta = _decode_meta(batch, i)
                text = meta["row"].get("completion")
                if not isinstance(text, str):
                    raise TuneError(
                        f"objective 'gkd' with lmbda < 1 trains on the rows' 'completion' "
                        f"column, which prompt {i}'s row lacks.",
                        where=f"{self.ctx.recipe.path}: [objective] lmbda",
                        fix="add a 'completion' to every row, or set lmbda = 1.0.",
                    )
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                ids = ids[: self.settings.max_completion_length]
                prompt_ids.append(batch["prompt_ids"][i, -n:].tolist())
                completions.append(ids)
                truncated.append(False)
            b = self.training_batch(prompt_ids, completions, truncated, pad)
            b["advantages"] = torch_zeros(len(prompt_ids))
            out.append(b)
        self.step_metrics = {}
        return out

    def advantages(self, rewards: Any, extra: dict[str, Any]) -> Any:
        return rewards * 0.0

    def with_logps(self, model: Any, batches: list[dict[str, Any]]) -> None:
        return None

    def metrics_of(self, table, rewards, done_ids, truncated, extra) -> dict[str, float]:
        out = super().metrics_of(None, rewards, done_ids, truncated, extra)
        return out

    def loss(self, model: Any, batch: dict[str, Any]) -> LossOutput:
        import torch

        s = self.settings
        comp = batch["completion_mask"].shape[1]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        student = model(**inputs, use_cache=False, logits_to_keep=comp + 1).logits[:, :-1]
        with torch.no_grad():
            teacher = torch.cat(
                [
                    self.teacher(
                        **{k: v[r : r + 1] for k, v in inputs.items()},
                        use_cache=False,
                        logits_to_keep=comp + 1,
                    ).logits[:, :-1]
                    for r in range(inputs["input_ids"].shape[0])
                ]
            )
        loss = generalized_jsd(student, teacher, batch["completion_mask"], s.beta, s.temperature)
        metrics = {k: v for k, v in self.step_pairs().items()}
        return LossOutput(loss, metrics)
