"""Data formats `chat`, `alpaca`, `prompt_completion` and `text`.

Rows are checked and normalized without torch (so `tune validate` can check every row), then
tokenized. Chat data accepts OpenAI `messages` (role/content) and ShareGPT `conversations`
(from/value).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from tune.plugin import DataFormat, Settings, TuneError, chat, hookimpl

TemplateName = Literal["tokenizer", "llama-3.1", "chatml", "mistral"]


class _FormatSettings(Settings):
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="what to do with an example longer than max_seq_len"
    )


class ChatSettings(_FormatSettings):
    template: TemplateName = Field("tokenizer", description="the tokenizer's own, or a name")
    train_on_prompt: bool = False
    messages_field: str | None = Field(None, description="None = messages or conversations")
    tools_field: str = Field("tools", description="the row's tool definitions (list or JSON)")
    system_prompt: str | None = None
    empty_replies: Literal["drop", "error"] = Field(
        "drop",
        description="conversations with an empty assistant reply: dropped (counted) or an error",
    )


class AlpacaSettings(_FormatSettings):
    template: TemplateName = "tokenizer"
    train_on_prompt: bool = False
    system_prompt: str | None = None
    empty_replies: Literal["drop", "error"] = "drop"


class PromptCompletionSettings(_FormatSettings):
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    train_on_prompt: bool = False
    add_eos: bool = True


class TextSettings(_FormatSettings):
    text_field: str = "text"
    add_eos: bool = True
    stride: int | None = Field(
        None, gt=0, description="split long texts into max_seq_len windows every stride tokens"
    )


# -- the formats ----------------------------------------------------------------------------------
class ChatFormat(DataFormat):
    """A conversation rendered through the chat template; assistant turns are trained."""

    chat = True

    def __init__(self, settings, tokenizer=None, **kwargs):
        super().__init__(settings, tokenizer, **kwargs)
        if tokenizer is not None:
            chat.use_template(tokenizer, settings.template, f"{self.where} template")

    def check(self, row, where):
        return chat.normalize_chat(row, self.settings, where)

    def encode(self, record, where):

        if isinstance(record, dict) and "drop" in record:
            self.counts[record["drop"]] += 1
            return []
        messages, tools = (
            (record["messages"], record["tools"]) if isinstance(record, dict) else (record, None)
        )
        uses_tools = tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
        if uses_tools and not chat.can_render_tools(self.tokenizer, self.settings.template):
            raise TuneError(
                "this conversation uses tools, and the tokenizer's own chat template cannot "
                "render them (it never reads `tools`).",
                where=where,
                fix='set template = "chatml" or "llama-3.1" in [data], or drop the '
                "tool-calling rows.",
            )
        example = chat.tokenize_chat(
            self.tokenizer, messages, self.settings.train_on_prompt, where, tools
        )
        return self.fit([example], self.settings.truncation)

    def render_prompt(self, text):
        return chat.user_prompt(self.tokenizer, text, self.settings.system_prompt)


class AlpacaFormat(ChatFormat):
    """instruction (+ input) as the user turn, output as the assistant turn."""

    def check(self, row, where):
        return chat.normalize_alpaca(row, self.settings, where)


class PromptCompletionFormat(DataFormat):
    """BOS prompt completion EOS, no template; the completion is trained."""

    def check(self, row, where):
        s = self.settings
        chat.need(row, [s.prompt_field, s.completion_field], where, "prompt_completion")
        return (
            chat.text_of(row[s.prompt_field], where, s.prompt_field),
            chat.text_of(row[s.completion_field], where, s.completion_field),
        )

    def encode(self, record, where):

        s = self.settings
        example = chat.tokenize_pair(self.tokenizer, *record, s.train_on_prompt, s.add_eos)
        return self.fit([example], s.truncation)


class TextFormat(DataFormat):
    """Plain text, every token trained; long texts optionally split into sliding windows."""

    @property
    def cuts_long_rows(self) -> bool:
        return self.settings.truncation == "truncate"

    def check(self, row, where):

        chat.need(row, [self.settings.text_field], where, "text")
        text = chat.text_of(row[self.settings.text_field], where, self.settings.text_field)
        if self.cuts_long_rows and not self.settings.stride:
            text = text[: self.row_limit()]  # the tokens past max_seq_len are cut anyway
        return text

    def encode(self, record, where):

        s = self.settings
        example = chat.tokenize_pair(self.tokenizer, "", record, True, s.add_eos)
        if s.stride and len(example["input_ids"]) > self.max_seq_len:
            windows = chat.sliding_windows(example["input_ids"], self.max_seq_len, s.stride)
            self.counts["windows"] += len(windows) - 1
            return self.fit(windows, s.truncation)
        return self.fit([example], s.truncation)


FORMATS: dict[str, tuple[type[DataFormat], type[BaseModel], str]] = {
    "chat": (ChatFormat, ChatSettings, "messages (OpenAI) or conversations (ShareGPT)"),
    "alpaca": (AlpacaFormat, AlpacaSettings, "instruction / input / output"),
    "prompt_completion": (PromptCompletionFormat, PromptCompletionSettings, "prompt + completion"),
    "text": (TextFormat, TextSettings, "plain text, every token trained"),
}


@hookimpl
def tune_provide(provide):
    for name, (_, settings, doc) in FORMATS.items():
        provide.data_format(name, settings, doc=doc)


@hookimpl
def tune_format_data(name, settings, tokenizer, ctx):
    cls = FORMATS[name][0]
    return cls(
        settings,
        tokenizer,
        max_seq_len=ctx.recipe.model.max_seq_len,
        where=f"{ctx.recipe.path}: [data]",
    )


@hookimpl
def tune_save_extras(model, path, ctx):
    """final/ and `tune merge` output stop at the end of a turn: when a named template set the
    tokenizer's eos to its end-of-turn token, the saved generation config gets it too (a list
    with the base's eos), so plain transformers `generate` stops where the template ends a reply.
    """
    from pathlib import Path

    backends = ctx.recipe.backends
    chosen = [backends.get("data_format"), *backends.get("data_mix", [])]
    named = [s for s in chosen if s and getattr(s.settings, "template", "tokenizer") != "tokenizer"]
    config = getattr(model, "generation_config", None)
    if not named or config is None or not (Path(path) / "tokenizer_config.json").exists():
        return
    from transformers import AutoTokenizer

    chat.end_of_turn_ids(model, AutoTokenizer.from_pretrained(str(path)))
    config.save_pretrained(str(path))
