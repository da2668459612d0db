"""Hostile data: giant rows, invalid UTF-8, empty replies, role order, null content.

Each is either handled and counted, or refused by `tune validate` with exit 2, the file:line and
the real cause, before any model is loaded."""

from __future__ import annotations

import pytest
from tune.testing import load_recipe as load
from tune.testing import recipe_dict, run_cli, tokenize, write_jsonl, write_recipe

U, A = "user", "assistant"


def chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


GOOD = [chat((U, f"reverse w{i}"), (A, f"{i}w")) for i in range(6)]


def _recipe(tmp_path, rows, fmt="chat", **data):
    path = tmp_path / "d.jsonl"
    if isinstance(rows, bytes):
        path.write_bytes(rows)
    else:
        write_jsonl(path, rows)
    recipe = recipe_dict(tmp_path, model={"max_seq_len": 64})
    recipe["data"] = {"format": fmt, "train": str(path), **data}
    if fmt == "chat":
        recipe["data"].setdefault("template", "llama-3.1")
    return write_recipe(tmp_path, recipe)


def _refused(path, *expected):
    out = run_cli("validate", str(path))
    assert out.returncode == 2, out.stdout
    assert "Traceback" not in out.stderr
    for text in expected:
        assert text in out.stderr, out.stderr
    return out.stderr


def test_a_giant_row_is_dropped_before_tokenization_and_counted(tmp_path):
    giant = chat((U, "x" * 300_000), (A, "y"))  # max_seq_len 64: bound is 64 Ki characters
    path = _recipe(tmp_path, [*GOOD[:3], giant, *GOOD[3:]])
    out = run_cli("validate", str(path))
    assert out.returncode == 0, out.stderr
    assert "6 train rows, 1 far longer than max_seq_len (dropped)" in out.stdout
    examples = tokenize(load(path))
    assert examples.stats["oversized"] == 1 and len(examples.train) == 6


def test_a_giant_text_row_is_cut_before_tokenization(tmp_path):
    rows = [{"text": "a" * 500_000}, {"text": "short"}]
    path = _recipe(tmp_path, rows, fmt="text")
    examples = tokenize(load(path))
    assert examples.stats["oversized"] == 1 and examples.stats["truncated"] == 1
    assert [len(e["input_ids"]) for e in examples.train] == [64, 7]  # BOS short EOS


def test_invalid_utf8_names_file_line_and_byte_offset(tmp_path):
    lines = [b'{"text": "fine"}\n', b'{"text": "also fine"}\n', b'{"text": "bad \xff here"}\n']
    path = _recipe(tmp_path, b"".join(lines), fmt="text")
    offset = len(lines[0]) + len(lines[1]) + len(b'{"text": "bad ')
    _refused(path, "d.jsonl:3", f"invalid UTF-8 at byte offset {offset}", "re-encode")


def test_invalid_utf8_in_a_json_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"text": "ok"},\n {"text": "\xc3\x28"}]')
    recipe = recipe_dict(tmp_path)
    recipe["data"] = {"format": "text", "train": str(path)}
    _refused(write_recipe(tmp_path, recipe), "d.json:2", "invalid UTF-8 at byte offset")


@pytest.mark.parametrize("reply", ["", "   \n "])
def test_empty_assistant_replies_are_dropped_and_counted(tmp_path, reply):
    path = _recipe(tmp_path, [*GOOD, chat((U, "hi"), (A, reply))])
    out = run_cli("validate", str(path))
    assert out.returncode == 0, out.stderr
    assert "1 with an empty assistant reply (dropped)" in out.stdout
    examples = tokenize(load(path))
    assert examples.stats["empty_replies"] == 1 and len(examples.train) == 6


def test_empty_replies_can_be_an_error(tmp_path):
    path = _recipe(tmp_path, [*GOOD, chat((U, "hi"), (A, " "))], empty_replies="error")
    _refused(path, "d.jsonl:7", "assistant reply in message 1 is empty")


def test_an_empty_alpaca_output_is_dropped(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "  "}]
    path = _recipe(tmp_path, rows, fmt="alpaca", template="llama-3.1")
    assert tokenize(load(path)).stats["empty_replies"] == 1


def test_a_conversation_starting_with_the_assistant_is_refused_by_validate(tmp_path):
    path = _recipe(tmp_path, [*GOOD, chat(("system", "s"), (A, "hello"), (U, "hi"), (A, "x"))])
    _refused(path, "d.jsonl:7", "starts with an assistant turn")


def test_two_user_turns_in_a_row_are_refused_by_validate(tmp_path):
    path = _recipe(tmp_path, [chat((U, "a"), (U, "b"), (A, "c")), *GOOD])
    _refused(path, "d.jsonl:1", "two user turns in a row")


def test_null_content_is_named_as_such(tmp_path):
    row = {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]}
    _refused(_recipe(tmp_path, [*GOOD, row]), "d.jsonl:7", "turn 0 (role 'user') has content: null")
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}]}
    _refused(_recipe(tmp_path, [sharegpt]), "d.jsonl:1", "turn 1 (role 'gpt') has value: null")


def test_a_giant_row_is_skipped_when_streaming_too(tmp_path):
    giant = chat((U, "x" * 300_000), (A, "y"))
    path = _recipe(tmp_path, [giant, *GOOD], streaming=True)
    examples = tokenize(load(path))
    rows = list(examples.stream.rows(None))
    assert examples.stream.encode(rows[0][1], rows[0][2]) == ([], {"oversized": 1})
    kept, counts = examples.stream.encode(rows[1][1], rows[1][2])
    assert len(kept) == 1 and counts["oversized"] == 0
