"""Streaming: lazy reading, on-the-fly batching, and resume at the exact example."""

from __future__ import annotations

import json

import pytest
from tune.data.files import stream_jsonl
from tune.data.stream import RowStream, StreamReader
from tune.testing import (
    chat_rows,
    final_weights,
    max_weight_diff,
    recipe_dict,
    run,
    run_cli,
    write_jsonl,
    write_recipe,
)


def text_source(tmp_path, sizes_per_file):
    """Rows whose example count varies (some rows give 2 examples) across several files."""
    files = []
    for f, sizes in enumerate(sizes_per_file):
        rows = [{"n": n, "id": f"{f}-{i}"} for i, n in enumerate(sizes)]
        files.append(write_jsonl(tmp_path / f"part{f}.jsonl", rows))

    def encode(where, row):
        examples = [
            {"input_ids": [1] * row["n"], "labels": [-100] + [2] * (row["n"] - 1), "id": row["id"]}
        ]
        if row["n"] > 20:  # like a long text split into two windows
            examples.append(
                {"input_ids": [1] * 5, "labels": [-100, 2, 2, 2, 2], "id": row["id"] + "b"}
            )
        return examples, {}

    return RowStream(rows=lambda start: stream_jsonl(files, start), encode=encode)


def ids(batch, packed):
    return [e["id"] for row in batch for e in row] if packed else [e["id"] for e in batch]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("world", [1, 2])
def test_resume_picks_up_the_exact_example(tmp_path, packed, world):
    source = text_source(tmp_path, [[5, 30, 7, 12, 25, 3], [9, 40, 4], [6, 6, 33, 8, 10]])
    for rank in range(world):
        kwargs = {
            "micro_batch_size": 2,
            "max_seq_len": 32,
            "pack": packed,
            "rank": rank,
            "world_size": world,
        }
        reference = StreamReader(source, **kwargs)
        straight = [ids(reference.next_micro_batch(), packed) for _ in range(12)]  # wraps epochs
        for cut in (1, 3, 5, 8):
            first = StreamReader(source, **kwargs)
            for _ in range(cut):
                first.next_micro_batch()
            state = json.loads(json.dumps(first.state_dict()))  # as saved in the checkpoint
            second = StreamReader(source, **kwargs)
            second.load_state_dict(state)
            resumed = [ids(second.next_micro_batch(), packed) for _ in range(12 - cut)]
            assert resumed == straight[cut:], (rank, cut)
        seen = {i for batch in straight for i in batch}
        mine = {f"{f}-{i}" for f, n in enumerate([6, 3, 5]) for i in range(n)}
        assert {s.rstrip("b") for s in seen} <= mine


def test_ranks_split_rows_without_overlap(tmp_path):
    source = text_source(tmp_path, [[5] * 10])
    got = [
        {
            e["id"]
            for _ in range(2)
            for e in StreamReader(source, 1, 64, False, rank=r, world_size=2).next_micro_batch()
        }
        for r in range(2)
    ]
    assert not got[0] & got[1]


def _stream_recipe(tmp_path, out, data_file, **train):
    data = recipe_dict(
        tmp_path,
        data={"train": str(data_file), "streaming": True, "pack": True},
        model={"max_seq_len": 128},
        train={"output_dir": str(tmp_path / out), "micro_batch_size": 2, **train},
    )
    return write_recipe(tmp_path, data, f"{out}.toml")


def test_streaming_run_resumes_exactly(tmp_path, run_recipe):
    from tune.recipe import load_recipe
    from tune.testing import plugin_manager
    from tune.train.run import run_training

    data_file = write_jsonl(tmp_path / "s.jsonl", chat_rows(50))  # 50 rows: the run wraps around
    straight = _stream_recipe(
        tmp_path, "straight", data_file, max_steps=10, save_every=5, keep_last=3
    )
    pm = plugin_manager()
    run_training(load_recipe(straight, plugins=pm), pm)
    resumed = _stream_recipe(
        tmp_path, "resumed", data_file, max_steps=10, save_every=5, keep_last=3
    )
    run(resumed, resume_from=tmp_path / "straight/checkpoints/step-5")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert max_weight_diff(a, b) <= 1e-6
    cursor = json.loads((tmp_path / "straight/checkpoints/step-5/state-rank0.json").read_text())[
        "stream"
    ]
    assert cursor["position"]["offset"] > 0 and cursor["epoch"] >= 0


def test_streaming_reads_lazily(tmp_path, run_recipe):
    """A broken line far down the file is never reached by a short run: nothing is read up front."""
    rows = chat_rows(400)
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    with path.open("a") as fh:
        fh.write("{broken json\n")
    data = recipe_dict(
        tmp_path,
        data={"train": str(path), "streaming": True},
        train={"max_steps": 3, "micro_batch_size": 2},
    )
    summary, _ = run_recipe(data)
    assert summary["steps"] == 3 and summary["data"]["rows"] <= 7  # 6 used + 1 read ahead


@pytest.mark.parametrize(
    ("data", "train", "expected"),
    [
        ({"streaming": True}, {"max_steps": -1}, "max_steps must be set"),
        (
            {"streaming": True, "eval_fraction": 0.1},
            {"max_steps": 5},
            "eval_fraction needs the whole dataset",
        ),
    ],
)
def test_streaming_settings_are_checked(tmp_path, data, train, expected):
    path = write_recipe(tmp_path, recipe_dict(tmp_path, data=data, train=train))
    out = run_cli("validate", str(path))
    assert out.returncode == 2 and expected in out.stderr


def test_streaming_needs_jsonl(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text\nhello\n")
    data = recipe_dict(
        tmp_path,
        data={"train": str(csv), "streaming": True, "format": "text"},
        train={"max_steps": 2},
    )
    data["data"].pop("template")
    out = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert out.returncode == 2 and "streaming reads .jsonl" in out.stderr
