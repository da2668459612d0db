"""The hub data source, offline: a folder laid out like a Hub dataset repository (data files and
a README.md `configs:` block) is read by `datasets.load_dataset` through the same code path as a
downloaded Hub dataset."""

from __future__ import annotations

import json

import pytest
from tune.testing import (
    chat_rows,
    final_weights,
    load_recipe,
    max_weight_diff,
    recipe_dict,
    run,
    run_cli,
    tiny_tokenizer,
    tokenize,
    write_recipe,
)

README = """---
license: mit
configs:
- config_name: chat
  data_files:
  - split: train
    path: chat/train-00000-of-00001.jsonl
  - split: validation
    path: chat/validation.jsonl
- config_name: alpaca
  data_files:
  - split: train
    path: alpaca/train.jsonl
- config_name: text
  data_files:
  - split: train
    path: text/train.jsonl
- config_name: prompt_completion
  data_files:
  - split: train
    path: pc/train.jsonl
---
# A test dataset with the Hub's layout
"""

FORMATS = {
    "chat": {"template": "llama-3.1"},
    "alpaca": {"template": "llama-3.1"},
    "text": {},
    "prompt_completion": {},
}


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def hub_repo(tmp_path, monkeypatch):
    """org/reverse, as `huggingface-cli download --local-dir` leaves it; datasets' cache in tmp."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "org" / "reverse"
    chats = chat_rows(60)
    _jsonl(repo / "chat/train-00000-of-00001.jsonl", chats[:40])
    _jsonl(repo / "chat/validation.jsonl", chats[40:])
    pairs = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in chats[:40]]
    _jsonl(repo / "alpaca/train.jsonl", [{"instruction": p, "output": c} for p, c in pairs])
    _jsonl(repo / "text/train.jsonl", [{"text": f"{p} -> {c}"} for p, c in pairs])
    _jsonl(repo / "pc/train.jsonl", [{"prompt": p, "completion": c} for p, c in pairs])
    (repo / "README.md").write_text(README, encoding="utf-8")
    return repo


def _recipe(tmp_path, repo, fmt, source=None, out="run", **data):
    recipe = recipe_dict(tmp_path, model={"max_seq_len": 96})
    recipe["data"] = {
        "format": fmt,
        "train": str(repo),
        "source": {"name": "hub", "subset": fmt, **(source or {})},
        **FORMATS[fmt],
        **data,
    }
    recipe["train"]["output_dir"] = str(tmp_path / out)
    return recipe


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_reads_a_sliced_split(tmp_path, hub_repo, fmt, streaming):
    split = "train[5:15]" if streaming else "train[:25%]"  # 25% of 40 rows: 10
    recipe = _recipe(tmp_path, hub_repo, fmt, {"split": split, "streaming": streaming})
    recipe["data"]["streaming"] = streaming
    examples = tokenize(load_recipe(write_recipe(tmp_path, recipe)))
    if streaming:
        rows = list(examples.stream.rows(None))
        assert len(rows) == 10 and rows[0][0] == {"spec": 0, "row": 0}
        train = [e for _, where, row in rows for e in examples.stream.encode(where, row)[0]]
    else:
        assert examples.stats["rows"] == 10
        train = examples.train
    assert len(train) == 10
    text = tiny_tokenizer().decode(train[0]["input_ids"])
    assert "reverse" in text


def test_eval_split_and_validate_offline(tmp_path, hub_repo):
    recipe = _recipe(tmp_path, hub_repo, "chat", {"split": "train[:10]"}, eval=str(hub_repo))
    out = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert out.returncode == 0, out.stderr
    assert "10 train rows, 20 eval rows" in out.stdout


def test_validate_a_hub_id_offline_says_what_it_will_download(tmp_path):
    recipe = recipe_dict(tmp_path)
    recipe["data"] = {
        "format": "chat",
        "template": "llama-3.1",
        "train": "hf://someorg/some-chats",
        "source": {"name": "hub", "split": "train[:5%]", "revision": "v1"},
    }
    out = run_cli("validate", str(write_recipe(tmp_path, recipe)), env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "will download" in out.stdout and "someorg/some-chats" in out.stdout
    assert "split train[:5%]" in out.stdout and "revision v1" in out.stdout


def test_no_network_is_one_paragraph_naming_the_dataset_and_the_local_fix(tmp_path):
    recipe = recipe_dict(tmp_path)
    recipe["data"] = {
        "format": "chat",
        "template": "llama-3.1",
        "train": "hf://someorg/some-chats",
        "source": "hub",
    }
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_TOKEN": "hf_secret123"}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf-cache")
    out = run_cli("data", "preview", str(write_recipe(tmp_path, recipe)), env=env)
    assert out.returncode == 2, out.stderr
    assert "someorg/some-chats" in out.stderr and "--local-dir" in out.stderr
    assert "Traceback" not in out.stderr and "hf_secret123" not in out.stderr + out.stdout


def test_streaming_split_slices_by_rows_and_refuses_percent(tmp_path, hub_repo):
    recipe = _recipe(tmp_path, hub_repo, "text", {"split": "train[5:15]", "streaming": True})
    recipe["data"]["streaming"] = True
    recipe["train"]["max_steps"] = 2
    path = write_recipe(tmp_path, recipe)
    examples = tokenize(load_recipe(path))
    rows = [row for _, _, row in examples.stream.rows(None)]
    assert len(rows) == 10 and rows[0]["text"].startswith(chat_rows(6)[5]["messages"][0]["content"])
    recipe["data"]["source"]["split"] = "train[:5%]"
    out = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert out.returncode == 2 and "percent" in out.stderr


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_trains_and_resumes_exactly(tmp_path, hub_repo, streaming):
    def recipe(out):
        r = _recipe(
            tmp_path,
            hub_repo,
            "chat",
            {"split": "train[:24]", "streaming": streaming},
            out=out,
            streaming=streaming,
        )
        r["train"].update(max_steps=6, save_every=3, micro_batch_size=2, keep_last=3)
        return write_recipe(tmp_path, r, f"{out}.toml")

    run(recipe("straight"))
    run(recipe("resumed"), resume_from=tmp_path / "straight/checkpoints/step-3")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert max_weight_diff(a, b) <= 1e-6
    if streaming:  # the checkpoint holds the dataset position, not a copy of the data
        state = json.loads((tmp_path / "straight/checkpoints/step-3/state-rank0.json").read_text())
        assert state["stream"]["position"] == {"spec": 0, "row": 6}
