"""Long-text windows, the tokenization cache, parallel tokenization, preview and stats."""

from __future__ import annotations

import json

from tune.data.examples import IGNORE, target_count
from tune.data.tokenize import sliding_windows
from tune.testing import recipe_dict, run_cli, write_jsonl, write_recipe

from tests.core.test_data import examples_for


def test_sliding_windows_train_every_token_once():
    ids = list(range(1000, 1000 + 1000))
    windows = sliding_windows(ids, max_len=128, stride=96)
    assert len(windows) == 11  # starts 0, 96, ..., 960
    assert all(len(w["input_ids"]) <= 128 for w in windows)
    trained = [
        t
        for w in windows
        for t, lab in zip(w["input_ids"], w["labels"], strict=True)
        if lab != IGNORE
    ]
    assert trained == ids[1:]  # each token a target exactly once, in order
    # the overlap (32 tokens) is context in every window after the first
    assert windows[1]["labels"][:32] == [IGNORE] * 32


def test_a_long_book_becomes_windows(tmp_path):
    book = " ".join(f"word{i}" for i in range(20000))  # about 130k byte tokens
    ex, _ = examples_for(
        tmp_path, [{"text": book}, {"text": "short one"}], format="text", max_len=1024, stride=768
    )
    n_tokens = len(book.encode()) + 2  # bos + bytes + eos
    assert ex.stats["windows"] == len(ex.train) - 2
    assert sum(target_count(e) for e in ex.train) == (n_tokens - 1) + len("short one") + 1
    assert ex.stats["truncated"] == 0


def test_cache_hits_then_misses_on_any_change(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        }
        for i in range(20)
    ]
    a, _ = examples_for(tmp_path, rows, template="chatml")
    b, _ = examples_for(tmp_path, rows, template="chatml")
    assert (a.stats["cache"], b.stats["cache"]) == ("miss", "hit") and a.train == b.train
    assert examples_for(tmp_path, rows, template="llama-3.1")[0].stats["cache"] == "miss"
    assert (
        examples_for(tmp_path, rows, template="chatml", train_on_prompt=True)[0].stats["cache"]
        == "miss"
    )
    assert (
        examples_for(tmp_path, rows[:-1], template="chatml")[0].stats["cache"] == "miss"
    )  # new content
    assert examples_for(tmp_path, rows, template="chatml", max_len=64)[0].stats["cache"] == "miss"
    assert examples_for(tmp_path, rows, template="chatml", cache=False)[0].stats["cache"] == "off"


def test_parallel_tokenization_gives_identical_examples(tmp_path):
    rows = [{"text": f"document number {i} " * (i % 7 + 1)} for i in range(300)]
    one, _ = examples_for(tmp_path, rows, format="text", cache=False)
    two, _ = examples_for(tmp_path, rows, format="text", cache=False, num_proc=2)
    assert one.train == two.train


def test_bad_row_found_in_a_worker_names_its_line(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    ] * 50
    rows[37] = {  # passes the row check; only the mistral template refuses it
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    }
    path = write_recipe(
        tmp_path,
        recipe_dict(
            tmp_path,
            data={
                "train": str(write_jsonl(tmp_path / "m.jsonl", rows)),
                "template": "mistral",
                "num_proc": 2,
            },
        ),
    )
    out = run_cli("run", str(path))
    assert out.returncode == 2 and "m.jsonl:38" in out.stderr and "alternate" in out.stderr


def test_data_preview_and_stats_cli():
    out = run_cli("data", "preview", "recipes/quickstart.toml", "-n", "2")
    assert out.returncode == 0, out.stderr
    assert "example 2: 40 tokens, 5 trained" in out.stdout and "<|eot_id|>" in out.stdout
    out = run_cli(
        "data",
        "stats",
        "recipes/quickstart.toml",
        "-o",
        "data.pack=true",
        "-o",
        "model.max_seq_len=512",
    )
    assert out.returncode == 0, out.stderr
    assert "packed (this recipe)" in out.stdout and "estimated steps" in out.stdout


def test_summary_reports_efficiency(tmp_path, run_recipe):
    summary, _ = run_recipe(
        recipe_dict(tmp_path, data={"pack": True}, train={"micro_batch_size": 2, "max_steps": 2})
    )
    assert (
        summary["packed"]
        and summary["token_efficiency"] == 1.0
        and 0 < summary["plan_efficiency"] <= 1
    )
    saved = json.loads((tmp_path / "run/summary.json").read_text())
    assert saved["data"]["train_examples"] == 64


def test_min_tokens_drops_short_documents_after_the_cache(tmp_path):
    """Long-context training wants documents of several windows: `min_tokens` drops the rest,
    counts them, and changing it reuses the tokenization cache."""
    rows = [{"text": "x" * n} for n in (10, 300, 40, 500)]
    everything, _ = examples_for(tmp_path, rows, format="text", max_len=1024)
    kept, _ = examples_for(tmp_path, rows, format="text", max_len=1024, min_tokens=200)
    assert everything.stats["train_examples"] == 4
    assert kept.stats["cache"] == "hit"  # the bound is applied after the cache
    assert [len(e["input_ids"]) for e in kept.train] == [302, 502]  # bos + bytes + eos
    assert kept.stats["short"] == 2 and kept.stats["train_examples"] == 2
    assert kept.stats["train_tokens"] == 804

    path = write_recipe(
        tmp_path,
        recipe_dict(
            tmp_path,
            data={"format": "text", "train": str(tmp_path / "d.jsonl"), "min_tokens": 5000},
        ),
    )
    text = path.read_text().replace('template = "chatml"\n', "")
    path.write_text(text)
    out = run_cli("run", str(path))
    assert out.returncode == 2 and "min_tokens" in out.stderr and "Traceback" not in out.stderr
