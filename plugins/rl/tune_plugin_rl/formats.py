"""Data format `prompt`: prompts to sample from, plus the columns the rewards read.

A row holds a prompt (a string, or a list of chat messages) in `prompt_column` and any other
columns (an `answer`, test cases ...): the rewards receive the whole row. The prompt is rendered
with the generation prompt (the chat template's assistant header, or BOS + text with
`chat = false`) and tokenized once; the row travels with the example as JSON text, so the
cached examples keep every column whatever its type. A prompt longer than `max_prompt_length`
tokens keeps its end (`truncation = "left"`) or is dropped, and the summary counts both.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field
from tune.plugin import DataFormat, Settings, TuneError, chat

PROMPTS = "prompt"  # the example kind: prompt ids + the row, nothing trained yet


class PromptSettings(Settings):
    """Keys of [data] for format `prompt`."""

    prompt_column: str = Field("prompt", description="the column holding the prompt")
    chat: bool = Field(
        True,
        description="render through the chat template with the generation prompt (a string "
        "becomes one user turn); false: the text as is, after BOS",
    )
    template: Literal["tokenizer", "llama-3.1", "chatml"] = Field(
        "tokenizer", description="the tokenizer's own chat template, or a named one"
    )
    system_prompt: str | None = Field(None, description="a system turn for rows without one")
    max_prompt_length: int | None = Field(
        None, gt=0, description="prompt tokens kept at most (default: [model] max_seq_len)"
    )
    truncation: Literal["left", "drop"] = Field(
        "left", description="a longer prompt keeps its end (left) or is dropped"
    )


def _fail(message: str, where: str, fix: str) -> TuneError:
    return TuneError(message, where=where, fix=fix)


class PromptFormat(DataFormat):
    """Rows -> {"prompt_ids", "meta"}: the rendered prompt's ids and the row (JSON text)."""

    def __init__(self, settings: PromptSettings, tokenizer: Any = None, **kwargs: Any):
        super().__init__(settings, tokenizer, **kwargs)
        self.chat = settings.chat
        if tokenizer is not None and settings.chat:
            chat.use_template(tokenizer, settings.template, f"{self.where} template")

    def check(self, row: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
        s = self.settings
        if not isinstance(row, dict):
            raise _fail("row is not a JSON object.", where, "write one object per line.")
        if s.prompt_column not in row or row[s.prompt_column] is None:
            raise _fail(
                f"row has no '{s.prompt_column}' column; it has {sorted(row)}.",
                where,
                f"give every row a prompt in '{s.prompt_column}', or set [data] prompt_column "
                "to the column that holds it.",
            )
        value = row[s.prompt_column]
        if isinstance(value, str):
            if not value.strip():
                raise _fail("the prompt is empty.", where, "give every row a prompt.")
            prompt: Any = value
        elif isinstance(value, list) and s.chat:
            prompt = [chat.message(t, where, f"prompt message {i}") for i, t in enumerate(value)]
            if not prompt:
                raise _fail("the prompt has no messages.", where, "give every row a prompt.")
        else:
            raise _fail(
                f"'{s.prompt_column}' is a {type(value).__name__}.",
                where,
                "give the prompt as a string (or, with chat = true, a list of messages).",
            )
        try:
            json.dumps(row)
        except (TypeError, ValueError) as exc:
            raise _fail(
                f"the row cannot be kept as JSON ({exc}).", where, "use JSON values."
            ) from None
        return prompt, row

    def render(self, prompt: Any, where: str) -> str:
        """The prompt as the model sees it before its reply."""
        s = self.settings
        if not s.chat:
            return (self.tokenizer.bos_token or "") + prompt
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if s.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": s.system_prompt}, *messages]
        return chat.render(self.tokenizer, messages, True, where)

    def encode(self, record: tuple[Any, dict[str, Any]], where: str) -> list[dict[str, Any]]:
        prompt, row = record
        text = self.render(prompt, where)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = self.settings.max_prompt_length or self.max_seq_len
        if len(ids) > limit:
            if self.settings.truncation == "drop":
                self.counts["prompts_dropped"] += 1
                return []
            ids = ids[-limit:]
            self.counts["prompts_cut"] += 1
        meta = {"prompt": prompt, "row": row, "where": where}
        return [{"prompt_ids": list(ids), "meta": json.dumps(meta, ensure_ascii=False)}]
