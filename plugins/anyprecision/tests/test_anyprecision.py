"""AnyPrecisionAdamW: bf16 state + Kahan tracks fp32 AdamW better than plain bf16 AdamW."""

from __future__ import annotations

import pytest
import torch
from tune.testing import recipe_dict
from tune_plugin_anyprecision.optimizer import AnyPrecisionAdamW


def _regression(steps: int, make_optimizer, dtype):
    """A fixed least-squares problem; returns the weights after `steps` full-batch steps."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=gen)
    true_w = torch.randn(64, 16, generator=gen)
    y = x @ true_w
    w = torch.nn.Parameter((torch.randn(64, 16, generator=gen) * 0.1 + 1.0).to(dtype))
    optimizer = make_optimizer([w])
    for _ in range(steps):
        loss = ((x.to(dtype) @ w).float() - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return w.detach().float()


def test_bf16_kahan_tracks_fp32_adamw_closer_than_bf16_adamw():
    steps, lr = 300, 1e-4
    reference = _regression(
        steps, lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.01), torch.float32
    )
    plain_bf16 = _regression(
        steps, lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.01), torch.bfloat16
    )
    kahan = _regression(
        steps,
        lambda p: AnyPrecisionAdamW(p, lr=lr, weight_decay=0.01, use_kahan_summation=True),
        torch.bfloat16,
    )
    err_plain = float((plain_bf16 - reference).abs().mean())
    err_kahan = float((kahan - reference).abs().mean())
    print(
        f"mean |w - w_fp32| after {steps} steps: bf16 AdamW {err_plain:.2e}, AnyPrecision+Kahan {err_kahan:.2e}"
    )
    assert err_kahan < 0.25 * err_plain


def test_fp32_states_without_kahan_equal_torch_adamw():
    ref = _regression(
        50, lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False), torch.float32
    )
    ours = _regression(
        50,
        lambda p: AnyPrecisionAdamW(
            p, lr=1e-2, weight_decay=0.1, momentum_dtype=torch.float32, variance_dtype=torch.float32
        ),
        torch.float32,
    )
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.slow
def test_state_dtypes_and_recipe_run(tmp_path, run_recipe):
    data = recipe_dict(
        tmp_path,
        model={"dtype": "bfloat16"},
        optimizer={"name": "anyprecision_adamw", "lr": 1e-3},
        train={"max_steps": 4, "precision": "bf16"},
    )
    summary, _ = run_recipe(data)
    assert summary["last_loss"] < summary["first_loss"]
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    opt = AnyPrecisionAdamW([w], use_kahan_summation=True)
    w.grad = torch.ones_like(w)
    opt.step()
    state = opt.state[w]
    assert (
        state["exp_avg"].dtype
        == state["exp_avg_sq"].dtype
        == state["compensation"].dtype
        == torch.bfloat16
    )
