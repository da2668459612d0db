"""Parity with TRL 1.16: the same tensors through TRL's own loss code and through tune's give the
same loss and the same gradients.

TRL's `GRPOTrainer._compute_loss` and `RLOOTrainer._compute_loss` are called unbound on a small
object holding exactly the attributes they read (a real `accelerate.Accelerator`, TRL's own
fused LM head on its copy of the model), so the code under comparison is TRL's, line for line;
tune's side is the objective's `loss` as the core calls it, divided by the step's `count`.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from types import SimpleNamespace

import pytest
from tune.testing import tiny_model

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

P, C, R = 6, 7, 6  # prompt width, completion width, rows (3 prompts x 2 generations)


@pytest.fixture(scope="module")
def base():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model("tiny-llama")))
    return model.float().train()


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 200, (R, P), generator=g)
    completion = torch.randint(3, 200, (R, C), generator=g)
    cmask = torch.ones(R, C, dtype=torch.long)
    for r, n in enumerate([7, 5, 3, 7, 1, 6]):  # ragged completions, right-padded
        cmask[r, n:] = 0
        completion[r, n:] = 0
    advantages = torch.randn(R, generator=g)
    return prompt, completion, cmask, advantages, g


def _tune_logps(objective, model, batch):
    with torch.no_grad():
        return objective.completion_logps(model, batch)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _close_grads(a, b, tol):
    """Every gradient within `tol` of TRL's, relative to the largest gradient entry when that
    exceeds 1 (float32 sums of large terms differ in their last bits with the order)."""
    assert a.keys() == b.keys()
    scale = max(1.0, max(float(b[k].abs().max()) for k in b))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tol * scale, (worst, scale)


def _trl_grpo_self(model, loss_type, level, beta, eps_low, eps_high, bias_correction):
    from accelerate import Accelerator

    return SimpleNamespace(
        model=model,
        accelerator=Accelerator(cpu=True),
        top_entropy_quantile=1.0,
        aux_loss_enabled=False,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        args=SimpleNamespace(
            use_bias_correction_kl=bias_correction, delta=None, steps_per_generation=1
        ),
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1,
        max_completion_length=C,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_and_gradients_equal_trl(base, loss_type, level):
    # TRL's default KL bias correction on; off (the plain k3 KL) for the first loss type
    bias_correction = loss_type != "grpo"
    from trl import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head
    from tune_plugin_rl.objectives import GRPOObjective, GRPOSettings

    beta, eps_low, eps_high = 0.04, 0.2, 0.28
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    add_fused_lm_head(theirs, temperature=1.0, outputs=("log_probs", "entropy"))
    settings = GRPOSettings(
        loss_type=loss_type,
        importance_sampling_level=level,
        beta=beta,
        epsilon=eps_low,
        epsilon_high=eps_high,
        num_generations=2,
        max_completion_length=C,
        num_iterations=2,
        use_bias_correction_kl=bias_correction,
    )
    objective = GRPOObjective(settings)
    prompt, completion, cmask, advantages, g = _inputs()
    batch = {
        "input_ids": torch.cat([prompt, completion], 1),
        "attention_mask": torch.cat([torch.ones_like(prompt), cmask], 1),
        "completion_mask": cmask,
        "advantages": advantages,
    }
    logps = _tune_logps(objective, ours, batch)
    # Old and reference policies a little away from this one, so ratios clip on both sides.
    batch["old_logps"] = logps + 0.3 * torch.randn(logps.shape, generator=g)
    batch["ref_logps"] = logps + 0.1 * torch.randn(logps.shape, generator=g)

    out = objective.loss(ours, batch)
    loss = out.loss / objective.count(batch)
    loss.backward()

    inputs = {
        "prompt_ids": prompt,
        "prompt_mask": torch.ones_like(prompt),
        "completion_ids": completion,
        "completion_mask": cmask,
        "advantages": advantages,
        "old_per_token_logps": batch["old_logps"],
        "ref_per_token_logps": batch["ref_logps"],
        "num_items_in_batch": cmask.sum(),
    }
    fake = _trl_grpo_self(theirs, loss_type, level, beta, eps_low, eps_high, bias_correction)
    fake._get_per_token_logps_and_entropies = (
        GRPOTrainer._get_per_token_logps_and_entropies.__get__(fake)
    )
    trl_loss = GRPOTrainer._compute_loss(fake, theirs, inputs)
    trl_loss.backward()

    assert abs(float(loss) - float(trl_loss)) <= 1e-6, (float(loss), float(trl_loss))
    _close_grads(_grads(ours), _grads(theirs), 1e-6)
    # The metrics TRL users read agree too.
    m = fake._metrics["train"]
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "kl"):
        total, n = out.metrics[key]
        assert abs(total / n - m[key][0]) <= 1e-6, key
    assert m["clip_ratio/low_mean"][0] + m["clip_ratio/high_mean"][0] > 0  # clipping was tested


def test_rloo_loss_and_gradients_equal_trl(base):
    from trl import RLOOTrainer
    from trl.trainer.utils import add_fused_lm_head
    from tune_plugin_rl.losses import rloo_advantages
    from tune_plugin_rl.objectives import RLOOObjective, RLOOSettings

    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    add_fused_lm_head(theirs, temperature=1.0, outputs=("log_probs", "entropy"))
    objective = RLOOObjective(RLOOSettings(num_generations=2, num_iterations=2, epsilon=0.2))
    prompt, completion, cmask, _, g = _inputs(1)
    rewards = torch.randn(R, generator=g)
    advantages = rloo_advantages(rewards, 2)
    # TRL's own baseline on the same rewards
    grouped = rewards.view(-1, 2)
    expected = rewards - ((grouped.sum(1, keepdim=True) - grouped) / 1).view(-1)
    assert torch.allclose(advantages, expected)
    batch = {
        "input_ids": torch.cat([prompt, completion], 1),
        "attention_mask": torch.cat([torch.ones_like(prompt), cmask], 1),
        "completion_mask": cmask,
        "advantages": advantages,
    }
    logps = _tune_logps(objective, ours, batch)
    batch["old_logps"] = logps + 0.05 * torch.randn(logps.shape, generator=g, dtype=logps.dtype)
    out = objective.loss(ours, batch)
    loss = out.loss / objective.count(batch)
    loss.backward()

    from accelerate import Accelerator

    fake = SimpleNamespace(
        model=theirs,
        accelerator=Accelerator(cpu=True),
        aux_loss_enabled=False,
        epsilon_low=0.2,
        epsilon_high=0.2,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    fake._get_per_token_logps_and_entropies = (
        RLOOTrainer._get_per_token_logps_and_entropies.__get__(fake)
    )
    inputs = {
        "prompt_ids": prompt,
        "prompt_mask": torch.ones_like(prompt),
        "completion_ids": completion,
        "completion_mask": cmask,
        "advantages": advantages,
        "old_logps": (batch["old_logps"] * cmask).sum(1),
    }
    trl_loss = RLOOTrainer._compute_loss(fake, theirs, inputs)
    trl_loss.backward()
    assert abs(float(loss) - float(trl_loss)) <= 1e-6, (float(loss), float(trl_loss))
    # RLOO's ratio is exp of a whole sequence's summed log-probs: the two float32 log-softmax
    # kernels' last-bit differences, summed over a sequence, reach a few 1e-6 in the gradient.
    _close_grads(_grads(ours), _grads(theirs), 1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
def test_gkd_divergence_equals_trl_generalized_jsd(beta):
    from trl.experimental.gkd import GKDTrainer
    from tune_plugin_rl.losses import generalized_jsd

    g = torch.Generator().manual_seed(2)
    student = torch.randn(3, 5, 50, generator=g, requires_grad=True)
    teacher = torch.randn(3, 5, 50, generator=g)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    labels = torch.where(mask.bool(), torch.zeros_like(mask), torch.full_like(mask, -100))
    ours = generalized_jsd(student, teacher, mask, beta=beta, temperature=0.9) / mask.sum()
    (grad_ours,) = torch.autograd.grad(ours, student)
    theirs = GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=labels, beta=beta, temperature=0.9
    )
    (grad_theirs,) = torch.autograd.grad(theirs, student)
    assert abs(float(ours) - float(theirs)) <= 1e-6
    assert float((grad_ours - grad_theirs).abs().max()) <= 1e-6
