"""`[train] offload_activations`: what autograd saves goes to pinned host memory on a GPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tune.testing import load_recipe, recipe_dict, tiny_model, write_recipe
from tune.train.setup import activation_offload


def recipe_with(offload: bool):
    return SimpleNamespace(train=SimpleNamespace(offload_activations=offload))


def checkpointed_model(layers: int, device: str = "cpu"):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(tiny_model("tiny-llama")))
    config.num_hidden_layers, config.use_cache = layers, False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device)
    model.gradient_checkpointing_enable({"use_reentrant": False})
    return model.train()


def saved_through_hooks(model, ids) -> int:
    """How many tensors autograd saves through the saved-tensor hooks (what an offload moves)."""
    seen = [0]

    def pack(t):
        seen[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return seen[0]


def test_checkpointed_layer_inputs_reach_the_offload_hooks():
    """The offload relies on transformers' checkpointing saving each layer's input through the
    saved-tensor hooks (not as a plain reference): one more saved tensor per layer, nothing else
    from inside the layers. If that changes, the offload would move nothing that matters."""
    ids = torch.randint(5, 200, (1, 24), generator=torch.Generator().manual_seed(0))
    two, four = (saved_through_hooks(checkpointed_model(n), ids) for n in (2, 4))
    assert four - two == 2


def test_the_context_offloads_only_from_an_accelerator(tmp_path):
    assert isinstance(
        activation_offload(recipe_with(True), "cuda:0"), torch.autograd.graph.save_on_cpu
    )
    assert not isinstance(
        activation_offload(recipe_with(True), "cpu"), torch.autograd.graph.save_on_cpu
    )
    assert not isinstance(
        activation_offload(recipe_with(False), "cuda:0"), torch.autograd.graph.save_on_cpu
    )
    data = recipe_dict(tmp_path, train={"offload_activations": True})
    assert load_recipe(write_recipe(tmp_path, data)).train.offload_activations


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_same_loss_in_less_device_memory():
    model = checkpointed_model(8, "cuda")
    ids = torch.randint(5, 200, (1, 4096), device="cuda")
    peaks, losses = [], []
    for offload in (False, True):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with activation_offload(recipe_with(offload), "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
        losses.append(float(loss))
    assert losses[1] == losses[0]
    assert peaks[1] < peaks[0]
