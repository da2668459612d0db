"""`precompute_ref = true`: reference log-probs scored once before training, cached on disk.

They must give the per-step losses of the live reference (the frozen copy of a full fine-tune,
the adapter-disabled base with LoRA), be reused on --resume, change key with the data, and make
a full fine-tune under ZeRO-3 possible (2 processes match one)."""

from __future__ import annotations

import json

import pytest
from tune.testing import (
    final_weights,
    launch,
    max_weight_diff,
    run,
    run_cli,
    train_losses,
    write_recipe,
)

STEPS = 3


def _records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def _cache(run_dir):
    found = sorted((run_dir / "reference-logps").glob("logps-*.pt"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_precomputed_reference_gives_the_live_reference_losses(
    tmp_path, pairs, dpo_recipe_of, adapter
):
    rows = pairs(STEPS * 2)
    tables = {"eval": {"metrics": ["preference"]}}

    def recipe(out, **objective):
        made = dpo_recipe_of(
            rows,
            objective={"beta": 0.5, **objective},
            train={
                "max_steps": STEPS,
                "micro_batch_size": 2,
                "output_dir": str(tmp_path / out),
                "save_every": 2,
            },
            **tables,
        )
        made["data"]["eval"] = made["data"]["train"]
        if not adapter:
            made.pop("adapt")
        return write_recipe(tmp_path, made, f"{out}.toml")

    live = tmp_path / "live"
    summary_live, _ = run(recipe("live"))
    pre = tmp_path / "pre"
    pre_path = recipe("pre", precompute_ref=True)
    summary_pre, _ = run(pre_path)
    a, b = _records(live), _records(pre)
    assert len(a) == len(b) == STEPS
    for one, two in zip(a, b, strict=True):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected"):
            assert one[key] == pytest.approx(two[key], abs=1e-5), (key, one, two)
    assert abs(a[-1]["rewards/margins"]) > 1e-4  # it trained away from a reference that stayed
    for key in ("eval_loss", "eval_rewards/margins"):  # eval pairs are scored too
        assert summary_live["eval"][key] == pytest.approx(summary_pre["eval"][key], abs=1e-5)
    if adapter:
        return
    # --resume reuses the cache (same key) and continues exactly
    cache = _cache(pre)
    stamp = cache.stat().st_mtime_ns
    run(pre_path, resume_from=pre / "checkpoints" / "step-2", overwrite=True)
    assert _cache(pre) == cache and cache.stat().st_mtime_ns == stamp
    assert train_losses(pre)[-1:] == pytest.approx(train_losses(live)[-1:], abs=1e-5)


def test_cache_key_follows_the_pairs_and_the_model(tmp_path, dpo_recipe_of):
    from tune.testing import load_recipe, tokenize
    from tune_plugin_preference.precompute import cache_key

    recipe = load_recipe(write_recipe(tmp_path, dpo_recipe_of()))
    train = tokenize(recipe).train

    class Ctx:
        def __init__(self, r):
            self.recipe = r

    key = cache_key(Ctx(recipe), train, [])
    assert key == cache_key(Ctx(recipe), [dict(e) for e in train], [])
    changed = [dict(e) for e in train]
    changed[3] = {**changed[3], "rejected_ids": changed[3]["rejected_ids"][:-1]}
    assert cache_key(Ctx(recipe), changed, []) != key
    assert cache_key(Ctx(recipe), train[1:] + train[:1], []) != key  # order matters
    other = load_recipe(write_recipe(tmp_path, dpo_recipe_of(model={"init_seed": 1}), "o.toml"))
    assert cache_key(Ctx(other), train, []) != key


def test_precompute_with_streaming_is_refused(tmp_path, dpo_recipe_of):
    recipe = dpo_recipe_of(objective={"precompute_ref": True}, train={"max_steps": 2})
    recipe["data"]["streaming"] = True
    result = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 2, result.stdout + result.stderr
    out = " ".join((result.stdout + result.stderr).split())
    assert "precompute_ref" in out and "streaming = false" in out and "Traceback" not in out


def test_full_fine_tune_under_zero3_is_accepted_with_precompute(tmp_path, dpo_recipe_of):
    recipe = dpo_recipe_of(
        strategy={"name": "deepspeed", "zero_stage": 3}, objective={"precompute_ref": True}
    )
    recipe.pop("adapt")
    result = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_zero3_full_fine_tune_with_precomputed_reference(tmp_path, pairs, dpo_recipe_of):
    """2 processes under ZeRO-3 (each scoring its share of the pairs in lockstep; 9 pairs: one
    rank pads with an empty batch) give the losses and weights of one process."""
    rows = pairs(9)
    tables = {"objective": {"precompute_ref": True, "beta": 0.5}}
    # ZeRO-3's partitioned head takes full-logits log-probs: the single process does too.
    plain = {"max_steps": 2, "chunked_loss": False}
    single = tmp_path / "single"
    recipe = dpo_recipe_of(rows, train={**plain, "output_dir": str(single)}, **tables)
    recipe.pop("adapt")
    run(write_recipe(tmp_path, recipe, "single.toml"))
    dist = tmp_path / "dist"
    recipe = dpo_recipe_of(
        rows,
        strategy={"name": "deepspeed", "zero_stage": 3},
        train={**plain, "micro_batch_size": 2, "output_dir": str(dist)},
        **tables,
    )
    recipe.pop("adapt")
    result = launch(write_recipe(tmp_path, recipe, "dist.toml"), 2)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _records(single), _records(dist)
    assert len(a) == len(b) == 2
    for one, two in zip(a, b, strict=True):
        for key in ("loss", "rewards/margins", "logps/chosen"):
            # summed log-probs are ~30 in size: 1e-6 of them is float32 rounding
            assert one[key] == pytest.approx(two[key], abs=1e-5, rel=1e-6), (key, one, two)
    assert a[1]["rewards/margins"] != 0.0  # the policy moved away from the cached reference
    # Adam scales near-zero gradients up to ~lr: reduction-order noise shows at ~1e-5 here
    assert max_weight_diff(final_weights(single), final_weights(dist)) < 1e-4
