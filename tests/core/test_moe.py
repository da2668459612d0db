"""Mixture-of-experts models: what the adapters reach, the router loss, strategies, merge.

Tiny Qwen3-MoE / Mixtral / gpt-oss models built from their configs (fused 3-D experts, a top-k
router, the load-balancing loss on). Parity with Trainer + PEFT is in the peft plugin's tests.
"""

from __future__ import annotations

import pytest
from tune.testing import (
    SGD_PLUGIN,
    final_weights,
    launch,
    max_weight_diff,
    recipe_dict,
    train_losses,
    write_plugin,
    write_recipe,
)

MODEL = "tune:tiny-qwen3-moe"
LORA = [{"method": "lora", "r": 4, "alpha": 8, "targets": "all-linear"}]


def moe_recipe(tmp_path, out, strategy, adapt=LORA, **train):
    data = recipe_dict(
        tmp_path,
        n_rows=16,
        model={"path": MODEL, "max_seq_len": 64},
        adapt=list(adapt),
        optimizer={"name": "sgd", "lr": 0.2, "momentum": 0.9},
        strategy=strategy,
        data={"shuffle": False},
        train={"output_dir": str(tmp_path / out), "max_steps": 3, "max_grad_norm": 1.0, **train},
    )
    return write_recipe(tmp_path, data, f"{out}.toml")


@pytest.mark.slow
def test_two_process_fsdp2_and_zero3_equal_one_process(tmp_path):
    """One example per micro-batch everywhere (4 x 1 in one process, 2 x 1 on each of 2 ranks):
    the router loss is a function of the micro-batch, so equal micro-batches must give equal
    steps whichever rank computes them; LoRA on the fused experts under both shardings."""
    env = write_plugin(tmp_path, "sgd_plugin", SGD_PLUGIN)
    runs = {
        "single": ({"name": "single"}, 1, 4),
        "fsdp": ({"name": "fsdp"}, 2, 2),
        "zero3": ({"name": "deepspeed", "zero_stage": 3}, 2, 2),
    }
    for out, (strategy, nproc, accum) in runs.items():
        path = moe_recipe(tmp_path, out, strategy, micro_batch_size=1, grad_accum=accum)
        res = launch(path, nproc, "-p", "sgd_plugin", env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    one = train_losses(tmp_path / "single")
    assert one[-1] < one[0]
    for out in ("fsdp", "zero3"):
        two = train_losses(tmp_path / out)
        assert max(abs(a - b) for a, b in zip(one, two, strict=True)) <= 1e-5, (out, one, two)
        diff = max_weight_diff(final_weights(tmp_path / "single"), final_weights(tmp_path / out))
        assert diff <= 1e-5, out
    assert any("experts" in k for k in final_weights(tmp_path / "zero3"))
