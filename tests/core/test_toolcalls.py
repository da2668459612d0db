"""Tool-calling chats: ShareGPT function_call/observation + tools column (the glaive demo) and
OpenAI tools/tool_calls/tool, normalized to one form and rendered with tools; assistant turns and
their tool calls are trained, tool results are not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tune.builtin.formats import ChatFormat, ChatSettings
from tune.errors import TuneError
from tune.testing import recipe_dict, run_cli, tiny_tokenizer, write_jsonl, write_recipe

from tests.core.test_data import examples_for, trained_text

GLAIVE = Path("/work/shared/data/glaive_toolcall_en_demo.json")
GLAIVE_ROW = {
    "conversations": [
        {"from": "human", "value": "I have chicken and rice."},
        {
            "from": "function_call",
            "value": '{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "rice"]}}',
        },
        {"from": "observation", "value": '{"recipes": ["Chicken Fried Rice"]}'},
        {"from": "gpt", "value": "Try Chicken Fried Rice."},
    ],
    "tools": json.dumps(
        [
            {
                "name": "search_recipes",
                "description": "Search recipes",
                "parameters": {"type": "object", "properties": {"ingredients": {"type": "array"}}},
            }
        ]
    ),
}
OPENAI_ROW = {
    "messages": [
        {"role": "user", "content": "I have chicken and rice."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "search_recipes",
                        "arguments": '{"ingredients": ["chicken", "rice"]}',
                    },
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": '{"recipes": ["Chicken Fried Rice"]}',
        },
        {"role": "assistant", "content": "Try Chicken Fried Rice."},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "search_recipes",
                "description": "Search recipes",
                "parameters": {"type": "object", "properties": {"ingredients": {"type": "array"}}},
            },
        }
    ],
}
CALL = '{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "rice"]}}'


@pytest.mark.parametrize("row", [GLAIVE_ROW, OPENAI_ROW], ids=["sharegpt", "openai"])
def test_chatml_trains_the_tool_call_and_the_reply_not_the_tool_result(tmp_path, row):
    ex, tok = examples_for(tmp_path, [row], "tiny-qwen2", max_len=2048, template="chatml")
    example = ex.train[0]
    assert trained_text(example, tok) == (
        f"<tool_call>\n{CALL}\n</tool_call><|im_end|>\nTry Chicken Fried Rice.<|im_end|>\n"
    )
    text = tok.decode(example["input_ids"])
    assert "<tools>\n" in text and '"name": "search_recipes"' in text  # the tools list is shown
    assert '<tool_response>\n{"recipes": ["Chicken Fried Rice"]}\n</tool_response>' in text


def test_llama31_renders_calls_as_json_and_results_as_ipython(tmp_path):
    ex, tok = examples_for(tmp_path, [OPENAI_ROW], "tiny-llama", max_len=2048, template="llama-3.1")
    example = ex.train[0]
    assert trained_text(example, tok) == (
        '{"name": "search_recipes", "parameters": {"ingredients": ["chicken", "rice"]}}'
        "<|eot_id|>Try Chicken Fried Rice.<|eot_id|>"
    )
    text = tok.decode(example["input_ids"])
    assert "<|start_header_id|>ipython<|end_header_id|>" in text
    assert "Environment: ipython" in text


def test_sharegpt_and_openai_tool_rows_give_the_same_tokens(tmp_path):
    a, _ = examples_for(tmp_path, [GLAIVE_ROW], "tiny-qwen2", max_len=2048, template="chatml")
    b, _ = examples_for(tmp_path, [OPENAI_ROW], "tiny-qwen2", max_len=2048, template="chatml")
    assert a.train[0] == b.train[0]


def test_the_glaive_demo_file_trains(tmp_path, run_recipe):
    rows = json.loads(GLAIVE.read_text())[:8] if GLAIVE.exists() else [GLAIVE_ROW] * 8
    data = recipe_dict(tmp_path, model={"path": "tune:tiny-qwen2", "max_seq_len": 1024})
    data["data"] = {
        "format": "chat",
        "train": str(write_jsonl(tmp_path / "glaive.jsonl", rows)),
        "template": "chatml",
    }
    data["train"].update(max_steps=2, micro_batch_size=2)
    summary, _ = run_recipe(data)
    stats = summary["data"]
    assert stats["rows"] == 8 and stats["train_examples"] + stats["dropped"] == 8
    assert stats["train_examples"] >= 6  # long ones are cut to max_seq_len, prompt-only dropped


def test_a_template_without_tools_is_a_clear_error(tmp_path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [GLAIVE_ROW])
    data = recipe_dict(tmp_path, model={"path": "tune:tiny-mistral"})
    data["data"] = {"format": "chat", "train": str(path), "template": "mistral"}
    out = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert out.returncode == 2 and "t.jsonl:1" in out.stderr
    assert "template 'mistral' cannot render tool calls" in out.stderr
    assert "Traceback" not in out.stderr

    tokenizer = tiny_tokenizer("tiny-llama")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    fmt = ChatFormat(ChatSettings(), tokenizer, max_seq_len=256, where="r.toml: [data]")
    record = fmt.check(GLAIVE_ROW, "d.jsonl:1")
    with pytest.raises(TuneError, match="tokenizer's own chat template cannot render"):
        fmt.encode(record, "d.jsonl:1")


def test_data_preview_shows_the_tool_call(tmp_path):
    data = recipe_dict(tmp_path, model={"path": "tune:tiny-qwen2", "max_seq_len": 1024})
    data["data"] = {
        "format": "chat",
        "train": str(write_jsonl(tmp_path / "g.jsonl", [GLAIVE_ROW])),
        "template": "chatml",
        "cache": False,
    }
    out = run_cli("data", "preview", str(write_recipe(tmp_path, data)), "-n", "1")
    assert out.returncode == 0, out.stderr
    assert "<tool_call>" in out.stdout and "<tool_response>" in out.stdout
    assert "1 train examples" in out.stdout


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], "tool result"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": 3}}]},
            ],
            "tool calls with a 'name'",
        ),
        (
            [
                {"from": "human", "value": "q"},
                {"from": "function_call", "value": "{not json"},
                {"from": "gpt", "value": "a"},
            ],
            "not valid JSON",
        ),
    ],
)
def test_malformed_tool_rows_name_the_cause(tmp_path, turns, expected):
    key = "conversations" if "from" in turns[0] else "messages"
    path = write_jsonl(tmp_path / "bad.jsonl", [{key: turns}])
    data = recipe_dict(tmp_path, model={"path": "tune:tiny-qwen2"})
    data["data"] = {"format": "chat", "train": str(path), "template": "chatml"}
    out = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert out.returncode == 2 and expected in out.stderr and "bad.jsonl:1" in out.stderr
    assert "Traceback" not in out.stderr
