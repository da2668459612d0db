"""GRPO across 2 CPU processes (DDP, gloo) with generation fixed: the per-step losses, rewards
and final weights of one process over the same global batch, within 1e-5 (the step's
completion tokens are counted over both ranks, so DAPO's token normalization is exact)."""

from __future__ import annotations

import json

import pytest
from tune.testing import final_weights, launch, max_weight_diff, write_plugin, write_recipe

FIXED = """
import random

from tune.plugin import Completions, Rollout, hookimpl


class Fixed(Rollout):
    calls = 0

    def generate(self, model, prompts, sampling):
        step = Fixed.calls
        Fixed.calls += 1
        eos = sampling.eos_token_ids[0]
        out = []
        for i, p in enumerate(prompts):
            rng = random.Random(hash((tuple(p), i % 2, step)) & 0xFFFFFFFF)
            ids = [rng.randrange(60, 120) for _ in range(rng.randint(1, 6))]
            out.append(ids + [eos] if rng.random() < 0.5 else ids)
        return Completions(out, [False] * len(out))


@hookimpl
def tune_provide(provide):
    provide.rollout("fixed", None, doc="fixed completions (tests)", build=Fixed)
"""

REWARD = """
def reward(prompts, completions, **_):
    return [float(len(c) % 5) + 0.1 * sum(map(ord, c)) % 1.0 for c in completions]
"""

STEPS = 3


def _records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


STRATEGIES = {
    "ddp": {"name": "ddp"},
    "zero2": {"name": "deepspeed", "zero_stage": 2},
    "zero3": {"name": "deepspeed", "zero_stage": 3, "low_memory_load": False},
    "fsdp2": {"name": "fsdp"},
}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_processes_equal_one(tmp_path, grpo_recipe_of, strategy):
    env = write_plugin(tmp_path, "fixed_rollout", FIXED)
    (tmp_path / "rewards.py").write_text(REWARD)
    runs = {}
    for name, nproc, extra in (("single", 1, {}), ("dist", 2, {"strategy": STRATEGIES[strategy]})):
        recipe = grpo_recipe_of(
            objective={"name": "grpo", "num_generations": 2, "max_completion_length": 8},
            reward=[{"name": "python", "function": "rewards.py:reward"}],
            rollout={"name": "fixed"},
            adapt=[],
            optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
            train={
                "max_steps": STEPS,
                "micro_batch_size": 4 // nproc,
                "output_dir": str(tmp_path / name),
            },
            **extra,
        )
        result = launch(
            write_recipe(tmp_path, recipe, f"{name}.toml"), nproc, "-p", "fixed_rollout", env=env
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = tmp_path / name
    a, b = _records(runs["single"]), _records(runs["dist"])
    assert len(a) == len(b) == STEPS
    for one, two in zip(a, b, strict=True):
        for key in ("loss", "reward", "completions/mean_length", "grad_norm"):
            assert one[key] == pytest.approx(two[key], abs=1e-5), (key, one, two)
    assert max_weight_diff(final_weights(runs["single"]), final_weights(runs["dist"])) < 1e-5
