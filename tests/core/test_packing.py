"""Padding-free packing: exact per-example losses, no cross-example attention, high fill."""

from __future__ import annotations

import random

import pytest
import torch
from tune.data.batching import Batcher, collate_packed, pack_first_fit
from tune.data.examples import IGNORE, collate
from tune.testing import recipe_dict

from tests.core import hook_plugin

HOOKS = ["tests.core.hook_plugin"]


def tiny_model(attn: str):
    from transformers import AutoModelForCausalLM
    from tune.builtin.tiny import materialize

    path = materialize("tiny-llama", {}, 0)
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation=attn
    ).eval()


def examples(lengths: list[int], seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(10, 250) for _ in range(n)]
        labels = [IGNORE] * (n // 3) + ids[n // 3 :]  # a masked "prompt", then targets
        labels[0] = IGNORE
        out.append({"input_ids": ids, "labels": labels})
    return out


def per_example_losses(model, batch, boundaries: list[tuple[int, int]]) -> list[float]:
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
    labels = batch["labels"][0]
    out = []
    for start, end in boundaries:
        lg, lb = logits[start : end - 1], labels[start + 1 : end]
        out.append(
            float(torch.nn.functional.cross_entropy(lg, lb, ignore_index=IGNORE, reduction="sum"))
        )
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_losses_equal_each_example_alone(attn):
    model = tiny_model(attn)
    exs = examples([17, 40, 5, 29])
    with torch.no_grad():
        alone = []
        for e in exs:
            b = collate([e], pad_id=0)
            alone += per_example_losses(
                model,
                {"input_ids": b["input_ids"], "labels": b["labels"]},
                [(0, len(e["input_ids"]))],
            )
        packed = collate_packed([exs], pad_id=0)
        bounds, pos = [], 0
        for e in exs:
            bounds.append((pos, pos + len(e["input_ids"])))
            pos += len(e["input_ids"])
        together = per_example_losses(model, packed, bounds)
    assert together == pytest.approx(alone, abs=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_attention_across_examples(attn):
    model = tiny_model(attn)
    exs = examples([20, 30, 25])
    changed = [dict(e) for e in exs]
    changed[1] = {"input_ids": [t + 1 for t in exs[1]["input_ids"]], "labels": exs[1]["labels"]}
    with torch.no_grad():
        a = model(
            **{k: v for k, v in collate_packed([exs], pad_id=0).items() if k != "labels"},
            use_cache=False,
        ).logits[0]
        b = model(
            **{k: v for k, v in collate_packed([changed], pad_id=0).items() if k != "labels"},
            use_cache=False,
        ).logits[0]
    first, third = slice(0, 20), slice(50, 75)
    assert torch.allclose(a[first], b[first], atol=1e-6) and torch.allclose(
        a[third], b[third], atol=1e-6
    )
    assert not torch.allclose(a[20:50], b[20:50])  # the perturbed example itself did change


def realistic_lengths(n: int = 2000, seed: int = 0) -> list[int]:
    """Chat-like lengths: log-normal around ~250 tokens with a long tail, capped at 2048."""
    rng = random.Random(seed)
    return [max(8, min(2048, int(rng.lognormvariate(5.5, 0.8)))) for _ in range(n)]


def test_first_fit_fills_bins_on_a_realistic_mix():
    lengths = realistic_lengths()
    batcher = Batcher(lengths=lengths, micro_batch_size=2, max_seq_len=2048, seed=0, pack=True)
    assert batcher.efficiency() >= 0.95
    bins = pack_first_fit(list(range(len(lengths))), lengths, 2048)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # each example once
    assert all(sum(lengths[i] for i in b) <= 2048 for b in bins)
    padded = Batcher(lengths=lengths, micro_batch_size=8, max_seq_len=2048, seed=0)
    grouped = Batcher(
        lengths=lengths, micro_batch_size=8, max_seq_len=2048, seed=0, group_by_length=True
    )
    assert grouped.efficiency() > padded.efficiency() + 0.2


def test_packed_and_padded_steps_give_the_same_gradients(tmp_path, run_recipe):
    grads = {}
    for pack in (False, True):
        hook_plugin.GRADS.clear()
        data = recipe_dict(
            tmp_path,
            n_rows=4,
            strategy={"name": "recording"},
            data={"pack": pack, "shuffle": False},
            train={"micro_batch_size": 4, "max_steps": 1, "max_grad_norm": 0.0},
        )
        summary, _ = run_recipe(data, plugins=HOOKS, overwrite=True)
        grads[pack] = hook_plugin.GRADS[0]
        assert summary["packed"] is pack
    worst = max(float((grads[True][k] - grads[False][k]).abs().max()) for k in grads[True])
    assert worst < 1e-5, worst
