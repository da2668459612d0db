"""LoRA DPO across 2 CPU processes (gloo): DDP and DeepSpeed ZeRO-2 and ZeRO-3 give the
per-step losses and rewards of one process over the same global batch (under ZeRO-3 the
adapter-off reference runs on the partitioned base)."""

from __future__ import annotations

import json

import pytest
from tune.testing import final_weights, launch, max_weight_diff, run, write_recipe

STEPS = 3


def _records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "ddp"},
        {"name": "deepspeed", "zero_stage": 2},
        # An ordinary load: a partitioned one draws nothing from the random generator, so
        # LoRA's random A would start from other draws than the single process's.
        {"name": "deepspeed", "zero_stage": 3, "low_memory_load": False},
    ],
    ids=["ddp", "zero2", "zero3"],
)
def test_two_processes_equal_one(tmp_path, pairs, dpo_recipe_of, strategy):
    rows = pairs(STEPS * 4)
    # ZeRO-3 partitions the output head, so it takes the full-logits log-probs, not the chunked
    # ones; both sides do the same here (the two differ by float rounding, which Adam's first
    # steps amplify past this test's 1e-5).
    same = {"chunked_loss": strategy.get("zero_stage") != 3}
    single = tmp_path / "single"
    recipe = dpo_recipe_of(rows, train={"max_steps": STEPS, "output_dir": str(single), **same})
    run(write_recipe(tmp_path, recipe, "single.toml"))
    dist = tmp_path / "dist"
    recipe = dpo_recipe_of(
        rows,
        strategy=strategy,
        train={"max_steps": STEPS, "micro_batch_size": 2, "output_dir": str(dist), **same},
    )
    result = launch(write_recipe(tmp_path, recipe, "dist.toml"), 2)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _records(single), _records(dist)
    assert len(a) == len(b) == STEPS
    for one, two in zip(a, b, strict=True):
        for key in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen"):
            assert one[key] == pytest.approx(two[key], abs=1e-5), (key, one, two)
    assert max_weight_diff(final_weights(single), final_weights(dist)) < 1e-5
