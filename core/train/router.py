"""The router's load-balancing loss of a mixture-of-experts model, normalized like the loss.

transformers' MoE models (Qwen2/3-MoE, Mixtral, gpt-oss, ...) compute the Switch-style
load-balancing loss of each forward when `output_router_logits` is on, and add
`router_aux_loss_coef * aux_loss` to their own *mean* token loss. tune's objectives return a
SUM over target tokens that the core divides by the step's global target-token count, so the
router term is weighted here by the micro-batch's target tokens: after the core's division it is
the token-weighted mean of the micro-batches' router losses, whatever the accumulation or the
number of ranks (with one micro-batch per step it is exactly what Trainer adds). The term is
logged on its own (`router_loss`, unscaled), with how evenly the experts were used.

The HF implementations are dropless (no expert capacity), so no token is ever dropped: there is
no dropped-token figure to report.
"""

from __future__ import annotations

from typing import Any


def router_coefficient(config: Any) -> float:
    """The model's configured weight of the load-balancing loss (0 when it has none)."""
    return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)


def routes(config: Any) -> bool:
    """Whether forwards of this model return a router loss (`output_router_logits` on)."""
    return bool(getattr(config, "output_router_logits", False))


def _experts_per_token(config: Any) -> int:
    return int(getattr(config, "num_experts_per_tok", 0) or getattr(config, "top_k", 0) or 1)


def expert_load(router_logits: Any, top_k: int, mask: Any = None) -> Any:
    """[max, min] over experts of each expert's share of routed tokens times the number of
    experts, averaged over layers, as one tensor (read once: no device sync per layer): 1.0 is
    perfectly even; a max near E/k is routing collapse. None when no layer routed a token."""
    import torch

    loads = []
    for logits in router_logits:
        if logits is None or logits.ndim != 2:
            continue
        picked = logits.detach().topk(min(top_k, logits.shape[-1]), dim=-1).indices
        if mask is not None and mask.numel() == logits.shape[0]:
            picked = picked[mask.reshape(-1).bool().to(picked.device)]
        counts = torch.bincount(picked.reshape(-1), minlength=logits.shape[-1]).float()
        share = counts / counts.sum().clamp(min=1) * logits.shape[-1]
        loads.append(torch.stack([share.max(), share.min()]))
    return torch.stack(loads).mean(0) if loads else None


def router_terms(config: Any, out: Any, count: int, mask: Any = None) -> tuple[Any, dict]:
    """(the loss term to add to the micro-batch's summed loss or None, metrics) from a model
    output. Metrics: `router_loss` (a per-token sum: logged as the token-weighted mean) and the
    expert load (a `(sum, n)` pair: logged as the mean over micro-batches and ranks)."""
    aux = getattr(out, "aux_loss", None)
    if aux is None or not hasattr(aux, "detach"):
        return None, {}
    import torch

    term = router_coefficient(config) * aux.float() * count
    logits = getattr(out, "router_logits", None)
    load = expert_load(logits, _experts_per_token(config), mask) if logits else None
    values = [aux.detach().float().reshape(())]
    if load is not None:
        values += [load[0], load[1]]
    read = torch.stack([v.to(values[0].device) for v in values]).tolist()  # one device sync
    metrics: dict[str, Any] = {"router_loss": read[0] * count}
    if load is not None:
        metrics["expert_load_max"] = (read[1], 1)
        metrics["expert_load_min"] = (read[2], 1)
    return term, metrics
