"""Tiled MLP: the same loss and gradients as the untiled model, no intermediate kept whole."""

from __future__ import annotations

import pytest
import torch
from tune.errors import TuneError
from tune.testing import load_recipe, recipe_dict, run, tiny_model, train_losses, write_recipe
from tune.train.setup import decoder_layers
from tune.train.tiled import apply_tiled_mlp, remove_tiled_mlp


def model_for(arch: str, lora: bool, checkpointing: bool = False, r: int = 4):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model(arch)), dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=r, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(model, config)
    return model


def step(model) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss, gradients, and the most rows of any [rows, intermediate] tensor saved for backward."""
    model.zero_grad()
    ids = torch.randint(5, 250, (2, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    largest = [0]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        is_weight = t.untyped_storage().data_ptr() in weights
        if not is_weight and t.dim() >= 2 and t.shape[-1] == model.config.intermediate_size:
            largest[0] = max(largest[0], t.numel() // t.shape[-1])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, largest[0]


CASES = [
    ("tiny-llama", True, False),
    ("tiny-llama", False, True),
    ("tiny-mistral", True, True),
    ("tiny-mistral", False, False),
    ("tiny-qwen2", True, False),
    ("tiny-qwen2", False, True),
]


@pytest.mark.parametrize(("arch", "lora", "checkpointing"), CASES)
def test_same_loss_and_gradients_as_untiled(arch, lora, checkpointing):
    model = model_for(arch, lora, checkpointing)
    model.train()
    plain_loss, plain_grads, plain_largest = step(model)
    layers = decoder_layers(model)
    # 80 tokens in tiles of 16: five tiles, the padded row's tokens among them
    assert apply_tiled_mlp(layers, 16) == (len(layers), 0)
    tiled_loss, tiled_grads, tiled_largest = step(model)
    assert tiled_loss == pytest.approx(plain_loss, abs=1e-6)
    assert plain_grads.keys() == tiled_grads.keys() and len(plain_grads) > 0
    worst = max((plain_grads[n] - tiled_grads[n]).abs().max().item() for n in plain_grads)
    assert worst <= 1e-6
    if not checkpointing:  # [80, intermediate] tensors were kept; now none of over 16 rows
        assert (plain_largest, tiled_largest) == (80, 0)
    assert remove_tiled_mlp(model) == len(layers)
    assert step(model)[0] == pytest.approx(plain_loss, abs=1e-7)


def test_refusals_and_moe_left_untiled():
    class Dense(torch.nn.Module):
        def forward(self, x):
            return x

    class SparseMoeBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = torch.nn.ModuleList([Dense()])

    class Layer(torch.nn.Module):
        def __init__(self, mlp):
            super().__init__()
            if mlp is not None:
                self.mlp = mlp

    mixed = [Layer(Dense()), Layer(SparseMoeBlock())]
    assert apply_tiled_mlp(mixed, 16) == (1, 1)
    assert "forward" not in vars(mixed[1].mlp)
    calls = []
    mixed[0].mlp._tune_untiled_forward = lambda x: calls.append(len(x)) or x
    x = torch.randn(2, 20, 4)
    assert torch.equal(mixed[0].mlp(x), x) and calls == [
        14,
        13,
        13,
    ]  # 40 tokens: 3 even tiles of <= 16
    calls.clear()
    apply_tiled_mlp(mixed[:1], 16, tile_count=5)  # several ranks: a fixed count of calls
    mixed[0].mlp(torch.randn(1, 3, 4))
    assert calls == [1, 1, 1, 0, 0]
    for layers in ([Layer(None)], [Layer(SparseMoeBlock())], []):
        with pytest.raises(TuneError) as err:
            apply_tiled_mlp(layers, 16, where="r.toml")
        assert "r.toml: [train] tiled_mlp" in str(err.value) and "tiled_mlp = false" in str(
            err.value
        )


def test_a_tune_run_gives_the_same_losses(tmp_path):
    lora = [{"method": "lora", "r": 4, "targets": "all-linear"}]
    losses = []
    for tiled in (False, True):
        data = recipe_dict(
            tmp_path,
            data={"pack": True},
            adapt=lora,
            train={
                "output_dir": str(tmp_path / f"run-{tiled}"),
                "max_steps": 3,
                "tiled_mlp": tiled,
                "tiled_mlp_tokens": 32,
                "gradient_checkpointing": tiled,
            },
        )
        run(write_recipe(tmp_path, data, f"r{tiled}.toml"))
        losses.append(train_losses(tmp_path / f"run-{tiled}"))
    assert len(losses[0]) == 3
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)


def test_the_recipe_keys(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, recipe_dict(tmp_path, train={"tiled_mlp": True})))
    assert recipe.train.tiled_mlp and recipe.train.tiled_mlp_tokens == 1024


@pytest.mark.parametrize("adapt", [False, True])
def test_the_estimate_counts_what_tiles_keep(make_recipe, adapt, tmp_path):
    """`tune estimate`'s activation term with tiled MLPs is what autograd keeps (as
    test_estimate checks it untiled); the setup carries `tiled` once estimate/setup.py sets it."""
    from tune.estimate import estimate
    from tune.estimate.activations import activation_terms, tile_transient

    sections = {"train": {"chunked_loss": False, "tiled_mlp": True}}
    if adapt:
        sections["adapt"] = [{"method": "lora", "r": 8, "targets": "all-linear"}]
    recipe = load_recipe(make_recipe(**sections))
    setup = estimate(recipe, gpus=1, gpu_memory=80e9).setup
    setup.tiled, setup.tile_tokens = True, 16
    term = next(t for t in activation_terms(setup, not adapt) if t.name == "activations")
    model = model_for("tiny-llama", adapt, r=8)
    apply_tiled_mlp(decoder_layers(model), 16)
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    batch, seq = setup.micro_batch, setup.seq
    ids = torch.randint(0, 250, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    logsoftmax = batch * seq * setup.shapes.vocab * 4
    expected = term.bytes - setup.shapes.layers * tile_transient(setup)
    assert sum(saved.values()) - logsoftmax == pytest.approx(expected, rel=0.01)


def test_a_real_moe_model_is_refused():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model("tiny-qwen3-moe")))
    with pytest.raises(TuneError, match="mixture-of-experts"):
        apply_tiled_mlp(decoder_layers(model), 16)
