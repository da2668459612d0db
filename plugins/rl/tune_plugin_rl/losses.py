"""The losses and advantages of the online objectives, as plain tensor functions.

Each loss returns the SUM over the units its objective counts (sequences or completion tokens),
so the core's division by the step's global count gives TRL's normalization exactly when the
step is one micro-batch on one rank, and the exact global one otherwise. The parity tests call
these functions and TRL's own code on the same tensors. Imports torch inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Added to a reward's standard deviation before dividing by it (TRL uses the same 1e-4).
STD_EPS = 1e-4


def nanstd(x: Any, dim: int | None = None, keepdim: bool = False) -> Any:
    """The unbiased standard deviation ignoring NaNs (a reward that does not apply)."""
    import torch

    mean = torch.nanmean(x, dim=dim, keepdim=True) if dim is not None else torch.nanmean(x)
    var = (
        torch.nanmean((x - mean) ** 2, dim=dim, keepdim=keepdim)
        if dim is not None
        else (torch.nanmean((x - mean) ** 2))
    )
    count = (
        (~torch.isnan(x)).sum(dim=dim, keepdim=keepdim)
        if dim is not None
        else ((~torch.isnan(x)).sum())
    )
    return torch.sqrt(var * count / (count - 1))


def group_advantages(
    rewards: Any, num_generations: int, scale: str, batch_std: Any = None
) -> tuple[Any, Any]:
    """GRPO advantages: each reward minus its group's mean (the completions of one prompt,
    consecutive), divided by the group's std (`scale` "group"), the whole batch's (`batch`,
    `batch_std` given when the batch spans ranks) or nothing ("none"). NaN rewards (no reward
    applied) get advantage 0. Returns (advantages, per-completion std used)."""
    import torch

    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale == "batch":
        std = batch_std if batch_std is not None else nanstd(rewards)
        std = torch.as_tensor(std, dtype=rewards.dtype).expand_as(rewards)
    else:
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + STD_EPS)
    return torch.nan_to_num(advantages, nan=0.0), std


def rloo_advantages(rewards: Any, num_generations: int, normalize: bool = False) -> Any:
    """RLOO: each reward minus the mean of the other completions of its prompt."""
    import torch

    grouped = rewards.view(-1, num_generations)
    scorable = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    baseline = ((total - grouped) / (scorable - 1)).view(-1)
    advantages = rewards - baseline
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + STD_EPS)
    return torch.nan_to_num(advantages, nan=0.0)


@dataclass
class PolicyLoss:
    """One micro-batch's summed loss and the sums its metrics are made of ((sum, n) pairs)."""

    loss: Any
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)


def grpo_loss(
    logps: Any,
    old_logps: Any,
    ref_logps: Any,
    advantages: Any,
    mask: Any,
    *,
    loss_type: str = "dapo",
    level: str = "token",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    beta: float = 0.0,
    delta: float | None = None,
    max_completion_length: int = 1,
    bias_correction_kl: bool = True,
) -> PolicyLoss:
    """The clipped surrogate of GRPO and its variants, summed over the loss type's units.

    `logps`, `old_logps`, `ref_logps`, `mask`: [rows, completion] (the completion tokens);
    `old_logps` None means this very policy (ratio 1, gradient of the plain policy gradient);
    `advantages`: [rows]. Units: grpo and dr_grpo count sequences (grpo averages each
    sequence over its tokens, dr_grpo divides by `max_completion_length`); bnpo and dapo count
    completion tokens. `bias_correction_kl` multiplies the KL by the importance ratio (TRL's
    default since DeepSeek-V3.2): the same value on-policy, the unbiased reverse-KL gradient.
    """
    import torch

    mask = mask.to(logps.dtype)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    old = logps.detach() if old_logps is None else old_logps
    log_ratio = logps - old
    if level == "token":
        log_weights = log_ratio
    elif level == "sequence":
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"importance_sampling_level {level!r}")
    coef_1 = torch.exp(log_weights)
    kl = None
    if beta != 0.0:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        if bias_correction_kl:
            kl = kl * coef_1
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        coef_1 = torch.clamp(coef_1, max=delta)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    if kl is not None:
        per_token = per_token + beta * kl
    per_token = per_token * mask
    if loss_type == "grpo":
        loss = (per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / max_completion_length
    elif loss_type in ("bnpo", "dapo"):
        loss = per_token.sum()
    else:
        raise ValueError(f"loss_type {loss_type!r}")
    with torch.no_grad():
        low = ((coef_1 < 1 - epsilon_low) & (adv < 0)).to(logps.dtype)
        high = ((coef_1 > 1 + epsilon_high) & (adv > 0)).to(logps.dtype)
        metrics = {
            "clip_ratio/low_mean": _masked(low, mask),
            "clip_ratio/high_mean": _masked(high, mask),
            "clip_ratio/region_mean": _masked(((low + high) > 0).to(logps.dtype), mask),
        }
        if kl is not None:
            metrics["kl"] = _masked(kl, mask)
    return PolicyLoss(loss, metrics)


def _masked(x: Any, mask: Any) -> tuple[float, float]:
    """(sum, count) of `x` over the completion tokens, or over sequences when `x` has one
    value per sequence (sequence-level importance sampling), as TRL logs them."""
    if x.shape[-1] == 1:
        return float(x.sum()), float(x.shape[0])
    return float((x * mask).sum()), float(mask.sum())


def rloo_loss(
    logps: Any,
    old_logps: Any,
    advantages: Any,
    mask: Any,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> PolicyLoss:
    """RLOO's clipped surrogate on whole-sequence log-probs, summed over sequences."""
    import torch

    mask = mask.to(logps.dtype)
    seq = (logps * mask).sum(1)
    old = seq.detach() if old_logps is None else (old_logps * mask).sum(1)
    coef_1 = torch.exp(seq - old)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.to(logps.dtype)
    loss = (-torch.min(coef_1 * adv, coef_2 * adv)).sum()
    with torch.no_grad():
        low = ((coef_1 < 1 - epsilon_low) & (adv < 0)).to(logps.dtype)
        high = ((coef_1 > 1 + epsilon_high) & (adv > 0)).to(logps.dtype)
        n = float(seq.shape[0])
        metrics = {
            "clip_ratio/low_mean": (float(low.sum()), n),
            "clip_ratio/high_mean": (float(high.sum()), n),
            "clip_ratio/region_mean": (float(((low + high) > 0).sum()), n),
        }
    return PolicyLoss(loss, metrics)


def generalized_jsd(
    student_logits: Any, teacher_logits: Any, mask: Any, beta: float = 0.5, temperature: float = 1.0
) -> Any:
    """The generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024), summed over
    the tokens of `mask`: beta 0 is KL(teacher || student), 1 is KL(student || teacher)
    (TRL's convention), between them the divergence to the beta-mixture."""
    import math

    import torch

    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if beta == 0:
        per = (t.exp() * (t - s)).sum(-1)
    elif beta == 1:
        per = (s.exp() * (s - t)).sum(-1)
    else:
        mix = torch.logsumexp(torch.stack([s + math.log1p(-beta), t + math.log(beta)]), dim=0)
        kl_teacher = (t.exp() * (t - mix)).sum(-1)
        kl_student = (s.exp() * (s - mix)).sum(-1)
        per = beta * kl_teacher + (1 - beta) * kl_student
    return (per * mask.to(per.dtype)).sum()
