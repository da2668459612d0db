"""Weighted mixing of [[data.mix]] sources: `weight` (sampling probability) or `epochs`."""

from __future__ import annotations

import math

from tune.data.mix import mix
from tune.testing import (
    chat_rows,
    final_weights,
    max_weight_diff,
    recipe_dict,
    run,
    run_cli,
    tokenize,
    write_jsonl,
    write_recipe,
)
from tune.testing import load_recipe as load


def test_weights_give_the_requested_proportions_over_2000_draws():
    a, b = [("a", i) for i in range(300)], [("b", i) for i in range(1700)]
    out, counts = mix([a, b], weights=[0.7, 0.3], epochs=[None, None], seed=1)
    assert len(out) == 2000 and counts == [
        sum(x[0] == "a" for x in out),
        sum(x[0] == "b" for x in out),
    ]
    sigma = math.sqrt(2000 * 0.7 * 0.3)  # binomial sampling error
    assert abs(counts[0] - 1400) < 4 * sigma, counts
    # the small source is repeated (a new seeded order each pass), the big one subsampled
    assert len(set(x for x in out if x[0] == "a")) == 300
    assert mix([a, b], [0.7, 0.3], [None, None], seed=1) == (out, counts)  # same seed, same mix
    assert mix([a, b], [0.7, 0.3], [None, None], seed=2)[0] != out


def test_epochs_repeat_a_source_and_take_a_seeded_fraction():
    a, b = list(range(10)), list(range(100, 120))
    out, counts = mix([a, b], weights=[None, None], epochs=[2, 0.5], seed=0)
    assert counts == [20, 10] and out[:20] == a + a and set(out[20:]) <= set(b)
    assert mix([a, b], [None, None], [2, 0.5], seed=0) == (out, counts)


def _mixed(tmp_path, out="run", **weights):
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"text {i}"} for i in range(40)])
    chats = write_jsonl(tmp_path / "chats.jsonl", chat_rows(40))
    data = recipe_dict(tmp_path, model={"max_seq_len": 64})
    data["data"] = {
        "format": "text",
        "train": str(texts),
        "weight": weights.get("text", 0.25),
        "mix": [{"format": "chat", "train": str(chats), "template": "chatml", "weight": 0.75}],
    }
    data["train"].update(output_dir=str(tmp_path / out), max_steps=6, save_every=3, keep_last=3)
    return write_recipe(tmp_path, data, f"{out}.toml")


def test_a_weighted_recipe_reports_examples_per_source_and_resumes_exactly(tmp_path):
    examples = tokenize(load(_mixed(tmp_path)))
    sources = examples.stats["sources"]
    assert sum(sources) == 80 and sources[1] > 2 * sources[0]  # 0.75 vs 0.25 of 80 draws
    assert examples.stats["source_examples"] == [40, 40]
    summary, _ = run(_mixed(tmp_path, "straight"))
    assert summary["data"]["sources"] == sources
    run(_mixed(tmp_path, "resumed"), resume_from=tmp_path / "straight/checkpoints/step-3")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert max_weight_diff(a, b) <= 1e-6


def test_weights_on_some_sources_only_are_refused(tmp_path):
    path = _mixed(tmp_path)
    text = path.read_text().replace("weight = 0.25\n", "")
    path.write_text(text)
    out = run_cli("validate", str(path))
    assert out.returncode == 2 and "[data] has none" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
