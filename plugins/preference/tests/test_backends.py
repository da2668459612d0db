"""DPO on a 4-bit (nf4) base with LoRA, and on streamed pairs."""

from __future__ import annotations

import json
import math

import pytest
from tune.testing import run, write_recipe


def _records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.slow
def test_qlora_dpo_reference_is_the_quantized_base(tmp_path, pairs, dpo_recipe_of):
    """nf4 base + LoRA: with beta 100 the step-0 loss is exactly log 2 (the adapter-off
    reference is the same 4-bit base the policy runs on), and it trains from there."""
    pytest.importorskip("bitsandbytes")
    recipe = dpo_recipe_of(
        pairs(4),
        model={"quantize": "nf4", "quantization": {"compute_dtype": "float32"}},
        objective={"beta": 100.0},
        train={"max_steps": 2, "micro_batch_size": 2},
    )
    run(write_recipe(tmp_path, recipe))
    first, second = _records(tmp_path / "run")
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert abs(second["loss"] - math.log(2)) > 1e-4  # the adapter moved, the base did not


@pytest.mark.slow
def test_streamed_pairs_train_like_pairs_in_memory(tmp_path, pairs, dpo_recipe_of):
    """`[data] streaming = true` reads pairs as training reaches them; in file order (shuffle
    off) the per-step losses and rewards are those of the in-memory run."""
    rows = pairs(8)
    results = []
    for streaming in (False, True):
        out = tmp_path / f"run-{streaming}"
        recipe = dpo_recipe_of(rows, train={"max_steps": 2, "output_dir": str(out)})
        recipe["data"]["streaming"] = streaming
        run(write_recipe(tmp_path, recipe, f"r-{streaming}.toml"))
        results.append(_records(out))
    for a, b in zip(*results, strict=True):
        for key in ("loss", "rewards/margins", "logps/chosen"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
