"""Data formats: normalization, exact prompt masking per template, files, splits, lengths."""

from __future__ import annotations

import json

import pytest
from tune.builtin.tiny import load_tokenizer
from tune.contract.context import RunContext
from tune.data.batching import share
from tune.data.examples import IGNORE, collate, epoch_order
from tune.data.pipeline import load_examples
from tune.recipe import load_recipe
from tune.registry.manager import get_plugin_manager
from tune.testing import recipe_dict, write_jsonl, write_recipe

CHAT = [{"role": "user", "content": "reverse hello"}, {"role": "assistant", "content": "olleh"}]


def examples_for(
    tmp_path, rows, tokenizer_name="tiny-llama", filename="d.jsonl", max_len=512, **data_keys
):
    path = tmp_path / filename
    if filename.endswith(".jsonl"):
        write_jsonl(path, rows)
    data = recipe_dict(
        tmp_path, data={"train": str(path), **data_keys}, model={"max_seq_len": max_len}
    )
    data["train"]["output_dir"] = str(tmp_path / "run")
    if data["data"].get("format", "chat") not in ("chat", "alpaca"):
        data["data"].pop("template")
    recipe = load_recipe(write_recipe(tmp_path, data), plugins=(pm := get_plugin_manager()))
    tokenizer = load_tokenizer(tokenizer_name)
    ctx = RunContext(recipe=recipe, output_dir=tmp_path)
    return load_examples(pm, tokenizer, ctx), tokenizer


def trained_text(example, tokenizer) -> str:
    return tokenizer.decode(
        [t for t, lab in zip(example["input_ids"], example["labels"], strict=True) if lab != IGNORE]
    )


@pytest.mark.parametrize(
    ("template", "arch", "expected"),
    [
        ("llama-3.1", "tiny-llama", "olleh<|eot_id|>"),
        ("chatml", "tiny-qwen2", "olleh<|im_end|>\n"),
        ("mistral", "tiny-mistral", " olleh<|end_of_text|>"),
    ],
)
def test_only_the_assistant_reply_and_its_end_token_are_trained(tmp_path, template, arch, expected):
    ex, tok = examples_for(tmp_path, [{"messages": CHAT}], arch, template=template)
    example = ex.train[0]
    assert trained_text(example, tok) == expected
    # the tokens are exactly those of the rendered conversation
    rendered = tok.apply_chat_template(CHAT, tokenize=False)
    assert tok.decode(example["input_ids"]) == rendered


def test_multi_turn_trains_every_assistant_turn_and_no_user_turn(tmp_path):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "AB"},
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": "CD"},
    ]
    ex, tok = examples_for(tmp_path, [{"messages": messages}], template="llama-3.1")
    assert trained_text(ex.train[0], tok) == "AB<|eot_id|>CD<|eot_id|>"


def test_train_on_prompt_trains_everything_but_the_first_token(tmp_path):
    ex, tok = examples_for(
        tmp_path, [{"messages": CHAT}], template="llama-3.1", train_on_prompt=True
    )
    labels = ex.train[0]["labels"]
    assert labels[0] == IGNORE and all(lab != IGNORE for lab in labels[1:])


def test_sharegpt_and_openai_rows_give_the_same_tokens(tmp_path):
    share = {
        "conversations": [
            {"from": "human", "value": "reverse hello"},
            {"from": "gpt", "value": "olleh"},
        ]
    }
    a, _ = examples_for(tmp_path, [{"messages": CHAT}], template="llama-3.1")
    b, _ = examples_for(tmp_path, [share], template="llama-3.1", filename="s.jsonl")
    assert a.train == b.train


def test_system_prompt_setting_is_prepended(tmp_path):
    ex, tok = examples_for(tmp_path, [{"messages": CHAT}], template="chatml", system_prompt="SYS")
    assert tok.decode(ex.train[0]["input_ids"]).startswith("<|im_start|>system\nSYS<|im_end|>")


def test_alpaca_rows(tmp_path):
    rows = [{"instruction": "reverse", "input": "hello", "output": "olleh"}]
    ex, tok = examples_for(tmp_path, rows, format="alpaca", template="chatml")
    text = tok.decode(ex.train[0]["input_ids"])
    assert "<|im_start|>user\nreverse\n\nhello<|im_end|>" in text
    assert trained_text(ex.train[0], tok) == "olleh<|im_end|>\n"


def test_prompt_completion_masks_the_prompt_and_adds_eos(tmp_path):
    ex, tok = examples_for(
        tmp_path, [{"prompt": "2+2=", "completion": "4"}], format="prompt_completion"
    )
    assert trained_text(ex.train[0], tok) == "4<|end_of_text|>"
    assert tok.decode(ex.train[0]["input_ids"]) == "<|begin_of_text|>2+2=4<|end_of_text|>"


def test_text_format_trains_every_token(tmp_path):
    ex, tok = examples_for(tmp_path, [{"text": "abc"}], format="text")
    assert trained_text(ex.train[0], tok) == "abc<|end_of_text|>"


def test_truncate_and_drop_are_counted(tmp_path):
    rows = [{"text": "x" * 200}, {"text": "short"}]
    ex, _ = examples_for(tmp_path, rows, format="text", max_len=64)
    assert ex.stats["truncated"] == 1 and len(ex.train[0]["input_ids"]) == 64
    ex, _ = examples_for(tmp_path, rows, format="text", max_len=64, truncation="drop")
    assert ex.stats["dropped"] == 1 and len(ex.train) == 1


def test_eval_fraction_split_is_deterministic_and_disjoint(tmp_path):
    rows = [{"text": f"row {i}"} for i in range(50)]
    a, tok = examples_for(tmp_path, rows, format="text", eval_fraction=0.2)
    b, _ = examples_for(tmp_path, rows, format="text", eval_fraction=0.2)
    assert len(a.eval) == 10 and len(a.train) == 40
    assert a.eval == b.eval
    train_text = {tok.decode(e["input_ids"]) for e in a.train}
    assert not train_text & {tok.decode(e["input_ids"]) for e in a.eval}


def test_json_csv_parquet_and_saved_dataset_dirs(tmp_path):
    import datasets

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("prompt,completion\na,b\nc,d\n")
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    results = [
        examples_for(tmp_path, rows, filename=name, format="prompt_completion")[0].train
        for name in ("d.json", "d.csv", "d.parquet", "saved")
    ]
    assert all(r == results[0] for r in results) and len(results[0]) == 2


def test_template_missing_tokens_is_reported(tmp_path):
    from tune.data.templates import use_template
    from tune.errors import TuneError

    class NoSpecials:
        def get_vocab(self):
            return {"a": 0}

    with pytest.raises(TuneError, match="needs the special tokens"):
        use_template(NoSpecials(), "chatml", "recipe.toml: [data] template")


def test_collate_pads_right_with_ignored_labels():
    batch = collate(
        [
            {"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]},
            {"input_ids": [4], "labels": [IGNORE]},
        ],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_epoch_order_and_sharding():
    assert epoch_order(10, 1, 0, True) == epoch_order(10, 1, 0, True)
    assert epoch_order(10, 1, 0, True) != epoch_order(10, 1, 1, True)
    batches = [[i, i + 1] for i in range(0, 10, 2)]  # 5 micro-batches for 2 ranks
    shares = [share(batches, r, 2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 3  # padded by wrapping to equal counts
    assert {i for s in shares for b in s for i in b} == set(range(10))
