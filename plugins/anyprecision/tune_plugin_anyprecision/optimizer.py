"""AnyPrecisionAdamW: decoupled-weight-decay Adam with state in any dtype and Kahan updates."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class AnyPrecisionAdamW(torch.optim.Optimizer):
    """AdamW with momentum/variance kept in `momentum_dtype`/`variance_dtype`.

    The arithmetic of each step runs in float32 (state is upcast, updated, stored back), so only
    storage is low precision. With `use_kahan_summation`, the part of each update that the
    parameter's dtype cannot represent is kept in a compensation buffer and re-applied on the
    next step, so bf16 weights follow the fp32 trajectory closely.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        use_kahan_summation: bool = False,
        momentum_dtype: torch.dtype = torch.bfloat16,
        variance_dtype: torch.dtype = torch.bfloat16,
        compensation_buffer_dtype: torch.dtype = torch.bfloat16,
    ):
        if lr <= 0 or eps <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"invalid AnyPrecisionAdamW hyper-parameters lr={lr} betas={betas} eps={eps}"
            )
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "use_kahan_summation": use_kahan_summation,
            "momentum_dtype": momentum_dtype,
            "variance_dtype": variance_dtype,
            "compensation_buffer_dtype": compensation_buffer_dtype,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            kahan = group["use_kahan_summation"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AnyPrecisionAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=group["momentum_dtype"])
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=group["variance_dtype"])
                    if kahan:
                        state["compensation"] = torch.zeros_like(
                            p, dtype=group["compensation_buffer_dtype"]
                        )
                state["step"] += 1
                step = float(state["step"])
                grad = p.grad.float()
                exp_avg = state["exp_avg"].float().mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq = (
                    state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                )
                state["exp_avg"].copy_(exp_avg)
                state["exp_avg_sq"].copy_(exp_avg_sq)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                # A new tensor: with fp32 state, exp_avg *is* the state (float() made no copy).
                update = exp_avg.div(denom).mul_(-lr / (1 - beta1**step))
                if wd:
                    update.add_(p.float(), alpha=-lr * wd)  # decoupled weight decay
                if kahan:
                    # Add the carried remainder, apply what the weight dtype can hold, keep the rest.
                    total = update.add_(state["compensation"].float())
                    before = p.float()
                    p.add_(total.to(p.dtype))
                    state["compensation"].copy_(total - (p.float() - before))
                else:
                    p.add_(update.to(p.dtype))
        return loss
