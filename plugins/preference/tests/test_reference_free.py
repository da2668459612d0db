"""SimPO and ORPO: TRL's own loss code (CPOTrainer loss_type="simpo", ORPOTrainer) and the
papers' formulas on fixed log-probs, then real runs through tune."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from tune.testing import run, write_recipe
from tune_plugin_preference.losses import dpo_loss, orpo_odds_term, simpo_loss

# per-token average log-probs of 4 pairs (chosen, rejected), from very likely to very unlikely
CHOSEN = torch.tensor([-0.05, -0.9, -2.5, -12.0], dtype=torch.float64)
REJECTED = torch.tensor([-0.3, -0.7, -4.0, -11.0], dtype=torch.float64)


def test_simpo_matches_trl_cpo_trainer_and_the_paper():
    from trl.experimental.cpo import CPOTrainer

    beta, gamma = 2.0, 0.5
    fake = SimpleNamespace(
        alpha=0.0,
        beta=beta,
        simpo_gamma=gamma,
        label_smoothing=0.0,
        loss_type="simpo",
        accelerator=SimpleNamespace(device="cpu"),
    )
    trl_losses, trl_c, trl_r = CPOTrainer.cpo_loss(fake, CHOSEN, REJECTED)
    ours = simpo_loss(CHOSEN, REJECTED, beta=beta, gamma=gamma)
    assert torch.allclose(ours, trl_losses, atol=1e-12)
    # Meng et al. 2024, eq. 6: -log sigma(beta/|y_w| log p(y_w) - beta/|y_l| log p(y_l) - gamma)
    for c, r, value in zip(CHOSEN.tolist(), REJECTED.tolist(), ours.tolist(), strict=True):
        z = beta * c - beta * r - gamma
        assert value == pytest.approx(math.log1p(math.exp(-z)), abs=1e-12)


def test_orpo_matches_trl_orpo_trainer_and_the_paper():
    from trl.experimental.orpo import ORPOTrainer

    beta = 0.25
    fake = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device="cpu"))
    trl_losses, _, _, _, trl_log_odds = ORPOTrainer.odds_ratio_loss(fake, CHOSEN, REJECTED)
    term, log_odds = orpo_odds_term(CHOSEN, REJECTED)
    assert torch.allclose((beta * term).double(), trl_losses.double(), atol=1e-6)
    assert float(log_odds.mean()) == pytest.approx(float(trl_log_odds), abs=1e-6)
    # Hong et al. 2024, eqs. 4 and 7: odds(y) = P / (1 - P); L_OR = -log sigma(log OR)
    for c, r, value in zip(CHOSEN.tolist(), REJECTED.tolist(), term.tolist(), strict=True):
        odds = lambda logp: math.exp(logp) / (1 - math.exp(logp))  # noqa: E731
        ratio = math.log(odds(c) / odds(r))
        assert value == pytest.approx(-math.log1p(math.exp(-ratio)), abs=1e-6)  # float32


def test_dpo_variants_match_their_formulas():
    ref_c, ref_r = CHOSEN * 0.9, REJECTED * 1.1
    delta = (CHOSEN - ref_c) - (REJECTED - ref_r)
    beta, eps = 0.3, 0.2
    sig = lambda x: 1 / (1 + torch.exp(-x))  # noqa: E731
    got = dpo_loss(CHOSEN, REJECTED, ref_c, ref_r, beta=beta, loss_type="hinge")
    assert torch.allclose(got, torch.clamp(1 - beta * delta, min=0))
    got = dpo_loss(
        CHOSEN, REJECTED, ref_c, ref_r, beta=beta, loss_type="robust", label_smoothing=eps
    )
    want = ((1 - eps) * -torch.log(sig(beta * delta)) - eps * -torch.log(sig(-beta * delta))) / (
        1 - 2 * eps
    )
    assert torch.allclose(got, want)
    got = dpo_loss(CHOSEN, REJECTED, ref_c, ref_r, beta=beta, label_smoothing=eps)
    want = -(1 - eps) * torch.log(sig(beta * delta)) - eps * torch.log(sig(-beta * delta))
    assert torch.allclose(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_reference_free_objectives_train(tmp_path, pairs, dpo_recipe_of, name):
    recipe = dpo_recipe_of(
        pairs(32),
        objective={"name": name, "beta": 2.0 if name == "simpo" else 0.1},
        optimizer={"lr": 5e-3},
        train={"max_steps": 8},
    )
    if name == "orpo":
        recipe.pop("adapt")  # ORPO is meant to train from a base model, SFT included
    run(write_recipe(tmp_path, recipe))
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["rewards/margins"] > records[0]["rewards/margins"]
