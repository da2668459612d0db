"""`[train] compile = true`: compiled decoder layers give the same losses (CPU inductor)."""

from __future__ import annotations

import pytest
from tune.testing import recipe_dict, train_losses

pytest.importorskip("torch")


def test_compiled_run_gives_the_same_losses_with_packed_dynamic_shapes(
    tmp_path, run_recipe, capsys
):
    losses = []
    for compiled in (False, True):
        recipe = recipe_dict(
            tmp_path,
            n_rows=24,
            model={"max_seq_len": 48},
            data={"pack": True},
            train={
                "output_dir": str(tmp_path / f"run-{compiled}"),
                "max_steps": 3,
                "micro_batch_size": 2,
                "compile": compiled,
            },
        )
        run_recipe(recipe, name=f"r{compiled}.toml")
        losses.append(train_losses(tmp_path / f"run-{compiled}"))
    assert "compile: 4 decoder layers" in capsys.readouterr().out
    eager, compiled = losses
    assert len(eager) == 3 and max(abs(a - b) for a, b in zip(eager, compiled, strict=True)) < 1e-4


def test_decoder_layers_are_compiled_in_place_and_keep_their_names():
    from transformers import AutoModelForCausalLM
    from tune.testing import tiny_model
    from tune.train.setup import compile_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model())
    keys = list(model.state_dict())
    assert "4 decoder layers (LlamaDecoderLayer)" in compile_model(model)
    assert list(model.state_dict()) == keys
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
