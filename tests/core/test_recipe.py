"""Recipes: validation messages for bad input, overrides, defaults and the resolved recipe."""

from __future__ import annotations

import json

import pytest
from tune.cli import main
from tune.recipe import dump_toml, load_recipe, parse_override
from tune.recipe.toml import tomllib
from tune.registry.manager import get_plugin_manager
from tune.testing import chat_rows, recipe_dict, run_cli, write_jsonl, write_recipe


def cli_error(capsys, *argv: str) -> str:
    """Run `tune ARGV` in-process; assert exit code 2 and return the one-paragraph message."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def mutate_toml(text: str):
    def apply(tmp_path, data):
        path = tmp_path / "recipe.toml"
        path.write_text(dump_toml(data) + text)
        return path

    return apply


def set_key(section: str, key: str, value):
    def apply(tmp_path, data):
        data.setdefault(section, {})[key] = value
        return write_recipe(tmp_path, data)

    return apply


def drop_key(section: str, key: str):
    def apply(tmp_path, data):
        del data[section][key]
        return write_recipe(tmp_path, data)

    return apply


def data_file(name: str, content: str, **data_keys):
    def apply(tmp_path, data):
        path = tmp_path / name
        path.write_text(content)
        data["data"].update({"train": str(path), **data_keys})
        if data["data"]["format"] not in ("chat", "alpaca"):
            data["data"].pop("template")  # only chat formats have a template
        return write_recipe(tmp_path, data)

    return apply


BAD_CASES = {
    "toml syntax": (mutate_toml("\n[train\nseed = 1\n"), ["not valid TOML", "line", "Fix:"]),
    "unknown table": (
        set_key("trian", "seed", 1),
        ["unknown table [trian]", "Did you mean 'train'?"],
    ),
    "unknown train key": (
        set_key("train", "epochz", 2),
        ["unknown key 'epochz' in [train]", "Did you mean 'epochs'?", "Fix:"],
    ),
    "wrong type": (
        set_key("train", "micro_batch_size", "four"),
        ["[train] micro_batch_size", "expected an integer", "'four'"],
    ),
    "bad literal": (
        set_key("train", "precision", "bf61"),
        ["[train] precision", "Did you mean 'bf16'?"],
    ),
    "missing path": (drop_key("model", "path"), ["[model] needs the key 'path'", "add path"]),
    "unknown loader": (
        set_key("model", "loader", "transformer"),
        ["[model] loader = 'transformer'", "Did you mean 'transformers'?"],
    ),
    "unknown optimizer key": (
        set_key("optimizer", "betaz", [0.9, 0.95]),
        ["unknown key 'betaz' in [optimizer]", "Did you mean 'betas'?", "plugin 'adamw'"],
    ),
    "unknown format": (
        set_key("data", "format", "sharegpt"),
        ["[data] format = 'sharegpt'", "Installed: alpaca, chat"],
    ),
    "missing data file": (
        set_key("data", "train", "nope.jsonl"),
        ["[data] train", "file not found: 'nope.jsonl'", "relative paths"],
    ),
    "malformed jsonl": (
        data_file("bad.jsonl", json.dumps(chat_rows(1)[0]) + '\n\n{"messages": [oops]}\n'),
        ["bad.jsonl:3", "malformed JSON", "one complete JSON object"],
    ),
    "alpaca fields": (
        data_file("a.jsonl", '{"prompt": "x", "answer": "y"}\n', format="alpaca"),
        ["a.jsonl:1", "'instruction'", "it has ['answer', 'prompt']", "expects"],
    ),
    "unknown role": (
        data_file(
            "tools.jsonl",
            json.dumps(
                {
                    "conversations": [
                        {"from": "human", "value": "hi"},
                        {"from": "function_call", "value": "{}"},
                    ]
                }
            )
            + "\n",
        ),
        ["tools.jsonl:1", "role 'function_call'", "tool-calling roles"],
    ),
    "empty file": (data_file("empty.jsonl", "\n"), ["no rows found", "empty"]),
    "empty conversation": (
        data_file("c.jsonl", '{"messages": []}\n'),
        ["c.jsonl:1", "'messages' is empty", "Fix:"],
    ),
    "no assistant turn": (
        data_file("u.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n'),
        ["u.jsonl:1", "no assistant turn"],
    ),
    "unknown metric": (
        set_key("eval", "metrics", ["passkey"]),
        ["[eval] metrics = 'passkey'", "tune-plugin-beacon"],
    ),
    "warmup twice": (
        lambda tmp_path, data: write_recipe(
            tmp_path, {**data, "scheduler": {"warmup_steps": 5, "warmup_ratio": 0.1}}
        ),
        ["[scheduler]", "both warmup_steps and warmup_ratio", "keep one"],
    ),
    "quantize without plugin": (
        set_key("model", "quantize", "nf4"),
        ["[model] quantize = 'nf4'", "tune-plugin-bitsandbytes"],
    ),
    "adapt without method": (
        lambda tmp_path, data: write_recipe(tmp_path, {**data, "adapt": [{"r": 8}]}),
        ["[[adapt]] #1 needs the key 'method'"],
    ),
    "unsupported suffix": (
        data_file("data.txt", "hello\n"),
        ["data.txt", "unsupported data file type '.txt'", ".jsonl"],
    ),
    "csv missing column": (
        data_file("d.csv", "question,answer\nhi,yo\n", format="prompt_completion"),
        ["d.csv: row 2", "'prompt'", "'completion'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_recipe_or_data_gets_one_clear_paragraph(case, tmp_path, capsys):
    make, expected = BAD_CASES[case]
    path = make(tmp_path, recipe_dict(tmp_path))
    # as if tune-plugin-bitsandbytes and tune-plugin-beacon were not installed
    message = cli_error(capsys, "-p", "no:bitsandbytes", "-p", "no:beacon", "validate", str(path))
    assert message.startswith("error:")
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_bad_override_names_the_override(tmp_path, capsys):
    path = write_recipe(tmp_path, recipe_dict(tmp_path))
    message = cli_error(capsys, "validate", str(path), "-o", "train.epochz=3")
    assert "set by -o train.epochz=3" in message and "Did you mean 'epochs'?" in message
    message = cli_error(capsys, "validate", str(path), "-o", "lr")
    assert "key=value" in message


def test_user_error_exits_2_without_traceback_in_a_real_process(tmp_path):
    path = write_recipe(tmp_path, recipe_dict(tmp_path, train={"epochz": 1}))
    out = run_cli("validate", str(path))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "epochs" in out.stderr


def test_overrides_are_typed_and_coerced(tmp_path):
    pm = get_plugin_manager()
    path = write_recipe(tmp_path, recipe_dict(tmp_path, adapt=[{"method": "freeze_except"}]))
    pm = get_plugin_manager(extra_modules=["tests.core.hook_plugin"])
    recipe = load_recipe(
        path,
        [
            "optimizer.lr=5e-5",
            "train.micro_batch_size=8",
            "train.gradient_checkpointing=true",
            "adapt.0.keep=model.norm",
            "eval.metrics=['perplexity']",
            "optimizer.betas=[0.9, 0.95]",
        ],
        plugins=pm,
    )
    assert recipe.backends["optimizer"].settings.lr == 5e-5
    assert recipe.backends["optimizer"].settings.betas == (0.9, 0.95)
    assert recipe.train.micro_batch_size == 8 and recipe.train.gradient_checkpointing is True
    assert recipe.backends["adapt"][0].settings.keep == "model.norm"
    assert recipe.eval.metrics == ["perplexity"]
    assert parse_override("data.train=my file.jsonl") == (["data", "train"], "my file.jsonl")


def test_resolved_recipe_round_trips_with_every_default(tmp_path):
    pm = get_plugin_manager()
    recipe = load_recipe(write_recipe(tmp_path, recipe_dict(tmp_path)), plugins=pm)
    resolved = recipe.resolved()
    assert resolved["optimizer"]["eps"] == 1e-8  # a default of the adamw plugin's settings
    assert resolved["train"]["grad_accum"] == 1
    text = dump_toml(resolved)
    again = tomllib.loads(text)
    assert again == json.loads(json.dumps(resolved))
    reloaded = load_recipe(write_recipe(tmp_path, again, "again.toml"), plugins=pm)
    assert reloaded.resolved() == resolved


def test_smallest_recipe_is_short(tmp_path):
    path = tmp_path / "small.toml"
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}])
    path.write_text(
        f'[model]\npath = "tune:tiny-llama"\n[data]\nformat = "text"\ntrain = "{train}"\n'
    )
    recipe = load_recipe(path, plugins=get_plugin_manager())
    assert recipe.strategy.name == "single" and recipe.optimizer.name == "adamw"
