"""Fuzz: random JSON-lines rows, per format, end in examples or a TuneError (exit 2) — never
another exception (which the CLI would show as a traceback)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tune.builtin.formats import FORMATS
from tune.data.files import iter_rows
from tune.errors import TuneError
from tune.testing import recipe_dict, run_cli, tiny_tokenizer, write_recipe

KEYS = [
    "messages", "conversations", "role", "content", "from", "value", "tool_calls", "function",
    "function_call", "name", "arguments", "parameters", "tools", "type", "system", "instruction",
    "input", "output", "prompt", "completion", "text",
]  # fmt: skip
ROLES = ["user", "assistant", "system", "tool", "human", "gpt", "function_call", "observation", "x"]

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.sampled_from(ROLES)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=16,
)
turn = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(ROLES),
        "from": st.sampled_from(ROLES),
        "content": scalars | values,
        "value": scalars | values,
        "tool_calls": values,
    },
)
rows = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(turn, max_size=5) | values,
        "conversations": st.lists(turn, max_size=5),
        "tools": values | st.just('[{"name": "f", "parameters": {}}]'),
        "system": scalars,
        **{
            k: scalars | values
            for k in ("instruction", "input", "output", "prompt", "completion", "text")
        },
    },
)
TOKENIZER = tiny_tokenizer("tiny-qwen2")


def _format(name):
    cls, model, _ = FORMATS[name]
    settings = model(template="chatml") if "template" in model.model_fields else model()
    return cls(settings, TOKENIZER, max_seq_len=256, where="fuzz.toml: [data]")


FORMAT_OBJECTS = {name: _format(name) for name in FORMATS}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row=rows, name=st.sampled_from(sorted(FORMATS)))
def test_random_rows_end_in_examples_or_a_tune_error(row, name):
    fmt = FORMAT_OBJECTS[name]
    try:
        record = fmt.check(row, "fuzz.jsonl:1")
        examples = fmt.encode(record, "fuzz.jsonl:1")
    except TuneError:
        return
    for example in examples:
        assert len(example["input_ids"]) == len(example["labels"]) <= 256


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(st.binary(max_size=40) | rows.map(lambda r: json.dumps(r).encode()), max_size=5)
)
def test_random_bytes_in_a_jsonl_file_read_or_fail_with_a_tune_error(tmp_path, lines):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    try:
        for _ in iter_rows(path):
            pass
    except TuneError:
        pass


@pytest.mark.parametrize("fmt", ["chat", "text"])
def test_random_rows_through_the_cli_exit_0_or_2_without_traceback(tmp_path, fmt):
    batch = [
        {"messages": [{"role": "user", "content": None}]},
        {"messages": "x"},
        {"conversations": [{"from": "gpt", "value": 3}]},
        {"text": ["a", {"type": "text", "text": "b"}]},
        {"tools": "{", "messages": []},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in batch) + "\n\xff")
    data = recipe_dict(tmp_path)
    data["data"] = {"format": fmt, "train": str(path)}
    out = run_cli("validate", str(write_recipe(tmp_path, data)))
    assert out.returncode in (0, 2) and "Traceback" not in out.stderr, out.stderr
