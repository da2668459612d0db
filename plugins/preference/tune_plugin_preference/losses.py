"""Per-pair preference losses on sequence log-probabilities (torch tensors of shape [pairs]).

Kept free of models and batches so each formula can be checked against the papers on fixed
numbers. Log-probs are sums over the completion tokens, as in TRL.
"""

from __future__ import annotations

from typing import Any


def dpo_loss(
    chosen: Any,
    rejected: Any,
    ref_chosen: Any,
    ref_rejected: Any,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_len: Any = None,
    rejected_len: Any = None,
) -> Any:
    """The per-pair loss of DPO and its variants.

    sigmoid: -log sigmoid(beta * delta) (Rafailov et al. 2023), with label smoothing the
    conservative cDPO mix; ipo: (delta_per_token - 1 / (2 beta))^2 (Azar et al. 2023, the log
    ratios divided by completion length as TRL does); hinge: relu(1 - beta * delta) (SLiC);
    robust: the unbiased noisy-label estimator of Chowdhury et al. 2024.
    delta = (chosen - ref_chosen) - (rejected - ref_rejected).
    """
    import torch.nn.functional as F

    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    eps = label_smoothing
    if loss_type == "sigmoid":
        return -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    if loss_type == "ipo":
        per_token = chosen_ratio / chosen_len.clamp(min=1) - rejected_ratio / rejected_len.clamp(
            min=1
        )
        return (per_token - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return F.relu(1 - beta * delta)
    if loss_type == "robust":
        clean = -(1 - eps) * F.logsigmoid(beta * delta)
        flipped = -eps * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * eps)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def simpo_loss(
    chosen_avg: Any,
    rejected_avg: Any,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> Any:
    """SimPO (Meng et al. 2024), reference-free: -log sigmoid(beta (avg_c - avg_r) - gamma),
    on per-token average log-probs; label smoothing as in TRL's CPOTrainer."""
    import torch.nn.functional as F

    z = beta * (chosen_avg - rejected_avg) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    import math

    import torch

    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_odds_term(chosen_avg: Any, rejected_avg: Any) -> tuple[Any, Any]:
    """ORPO's odds-ratio term (Hong et al. 2024, eq. 7): log sigmoid(log odds(c) - log odds(r))
    with odds(y) = p / (1 - p) on per-token average log-probs. Returns (term, log odds ratio)."""
    import torch.nn.functional as F

    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    return F.logsigmoid(log_odds), log_odds


def kto_loss(
    logratios: Any,
    desirable: Any,
    kl: Any,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Any:
    """KTO (Ethayarajh et al. 2024, eq. 8) per example: lambda_D (1 - sigma(beta (r - z0))) for
    a desirable reply, lambda_U (1 - sigma(beta (z0 - r))) for an undesirable one, where r is the
    policy/reference log ratio and z0 the (detached, non-negative) KL estimate."""
    import torch

    good = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    return torch.where(desirable.bool(), good, bad)
