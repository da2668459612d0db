"""`[[data.mix]]`: more training sources, each in its own format, in one run."""

from __future__ import annotations

from tune.builtin.tiny import load_tokenizer
from tune.contract.context import RunContext
from tune.data.examples import IGNORE
from tune.data.pipeline import load_examples
from tune.recipe import load_recipe
from tune.recipe.toml import tomllib
from tune.registry.manager import get_plugin_manager
from tune.testing import chat_rows, recipe_dict, run_cli, write_jsonl, write_recipe

TEXTS = [{"text": f"plain text number {i}"} for i in range(6)]


def mixed_recipe(tmp_path, **data_keys):
    """Main source: text rows; one mix source: chat rows with their own template."""
    text_file = write_jsonl(tmp_path / "texts.jsonl", TEXTS)
    chats = write_jsonl(tmp_path / "chats.jsonl", chat_rows(10))
    data = recipe_dict(tmp_path, model={"max_seq_len": 96})
    data["data"] = {
        "format": "text",
        "train": str(text_file),
        "mix": [{"format": "chat", "train": str(chats), "template": "chatml"}],
        **data_keys,
    }
    return data


def test_each_source_is_formatted_by_its_own_format(tmp_path):
    path = write_recipe(tmp_path, mixed_recipe(tmp_path))
    recipe = load_recipe(path, plugins=(pm := get_plugin_manager()))
    tokenizer = load_tokenizer("tiny-llama")
    examples = load_examples(pm, tokenizer, RunContext(recipe=recipe, output_dir=tmp_path))

    assert examples.stats["sources"] == [6, 10]
    assert examples.stats["train_examples"] == 16 and len(examples.train) == 16
    texts, chats = examples.train[:6], examples.train[6:]
    # text: every token after the first is trained; chat (chatml): the prompt is masked
    assert all(IGNORE not in e["labels"][1:] for e in texts)
    assert all(IGNORE in e["labels"][1:] for e in chats)
    assert "<|im_start|>assistant" in tokenizer.decode(chats[0]["input_ids"])


def test_a_mix_source_trains_and_the_saved_recipe_keeps_it(tmp_path, run_recipe):
    data = mixed_recipe(tmp_path)
    summary, _ = run_recipe(data)
    assert summary["data"]["sources"] == [6, 10]
    saved = tomllib.loads((tmp_path / "run" / "recipe.toml").read_text())
    assert saved["data"]["mix"][0]["format"] == "chat"
    assert saved["data"]["mix"][0]["template"] == "chatml"
    # the saved recipe is itself a valid recipe
    reloaded = load_recipe(tmp_path / "run" / "recipe.toml", plugins=get_plugin_manager())
    assert reloaded.data.mix[0].train_files == [data["data"]["mix"][0]["train"]]


def test_validate_reports_every_source(tmp_path):
    path = write_recipe(tmp_path, mixed_recipe(tmp_path))
    result = run_cli("validate", str(path))
    assert result.returncode == 0, result.stderr
    assert "text: 6 train rows" in result.stdout and "chat: 10 train rows" in result.stdout


def test_a_bad_key_in_a_mix_table_names_the_table(tmp_path):
    data = mixed_recipe(tmp_path)
    data["data"]["mix"][0]["templat"] = "chatml"
    result = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2
    assert "[[data.mix]] #1" in result.stderr and "template" in result.stderr
    assert "Traceback" not in result.stderr


def test_streaming_with_a_mix_is_refused_with_the_fix(tmp_path):
    data = mixed_recipe(tmp_path, streaming=True)
    data["train"]["max_steps"] = 2
    result = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert result.returncode == 2
    assert "[[data.mix]]" in result.stderr and "streaming = false" in result.stderr
