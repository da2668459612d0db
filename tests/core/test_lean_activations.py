"""Lean MLP activations: the same outputs and gradients, fewer saved tensors, only where exact."""

from __future__ import annotations

import types

import pytest
import torch
from tune.testing import build_model, load_recipe, recipe_dict, tiny_model, write_recipe
from tune.train.lean import (
    _lean_forward,
    apply_lean_activations,
    is_plain_gated_mlp,
    remove_lean_activations,
)


def lora_model(arch: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model(arch)), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(base, config)


def step(model, lean: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss, gradients and bytes autograd saved for backward (parameters excluded)."""
    (apply_lean_activations if lean else remove_lean_activations)(model)
    model.zero_grad()
    ids = torch.randint(5, 250, (2, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    saved: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, sum(saved.values())


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen2", "tiny-mistral"])
def test_same_loss_and_gradients_with_fewer_saved_bytes(arch):
    model = lora_model(arch)
    plain_loss, plain_grads, plain_bytes = step(model, lean=False)
    lean_loss, lean_grads, lean_bytes = step(model, lean=True)
    assert lean_loss == pytest.approx(plain_loss, abs=1e-6)
    assert plain_grads.keys() == lean_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, lean_grads[name], atol=1e-6), name
    config = model.config
    per_layer = 2 * 2 * 40 * config.intermediate_size * 4  # SiLU(gate) and the product, fp32
    assert plain_bytes - lean_bytes >= 0.9 * per_layer * config.num_hidden_layers
    assert step(model, lean=False)[2] == plain_bytes  # removing restores autograd's usual


def test_only_plain_known_mlps_change():
    model = lora_model("tiny-llama")
    mlps = [m for m in model.modules() if type(m).__name__ == "LlamaMLP"]
    mlps[0].forward = types.MethodType(lambda self, x: self.down_proj(x), mlps[0])  # replaced
    mlps[1].act_fn = torch.nn.GELU()  # not SiLU: the lean forward would not be exact
    assert apply_lean_activations(model) == len(mlps) - 2
    assert not is_plain_gated_mlp(model.get_input_embeddings())
    assert vars(mlps[0])["forward"].__func__ is not _lean_forward
    assert "forward" not in vars(mlps[1])


@pytest.mark.parametrize("lean", [True, False])
def test_the_recipe_switch(tmp_path, lean):
    recipe = load_recipe(
        write_recipe(tmp_path, recipe_dict(tmp_path, train={"lean_activations": lean}))
    )
    model, _ = build_model(recipe, tmp_path)
    patched = [
        m
        for m in model.modules()
        if getattr(vars(m).get("forward"), "__func__", None) is _lean_forward
    ]
    assert len(patched) == (model.config.num_hidden_layers if lean else 0)
