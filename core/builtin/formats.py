"""Data formats `chat`, `alpaca`, `prompt_completion` and `text`.

Rows are checked and normalized without torch (so `tune validate` can check every row), then
tokenized. Chat data accepts OpenAI `messages` (role/content) and ShareGPT `conversations`
(from/value).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tune.data.format import DataFormat
from tune.data.templates import ROLES
from tune.errors import TuneError
from tune.hookspecs import hookimpl

TemplateName = Literal["tokenizer", "llama-3.1", "chatml", "mistral"]


class _FormatSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="what to do with an example longer than max_seq_len"
    )


class ChatSettings(_FormatSettings):
    template: TemplateName = Field("tokenizer", description="the tokenizer's own, or a name")
    train_on_prompt: bool = False
    messages_field: str | None = Field(None, description="None = messages or conversations")
    system_prompt: str | None = None


class AlpacaSettings(_FormatSettings):
    template: TemplateName = "tokenizer"
    train_on_prompt: bool = False
    system_prompt: str | None = None


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


# -- checking rows (no torch) ---------------------------------------------------------------------
def _need(row: dict, fields: list[str], where: str, fmt: str) -> None:
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise TuneError(
            f"row has no {', '.join(repr(m) for m in missing)} for format '{fmt}'; "
            f"it has {sorted(row)}.",
            where=where,
            fix=f"format '{fmt}' expects {fields}; pick the format that matches the data "
            "([data] format) or rename the fields.",
        )


def _text(value: Any, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        parts = [
            p.get("text", "") for p in value if isinstance(p, dict) and p.get("type") == "text"
        ]
        if len(parts) == len(value):
            return "".join(parts)
    raise TuneError(
        f"'{field}' must be a string, got {type(value).__name__}.",
        where=where,
        fix="give text content as a string.",
    )


def normalize_chat(row: dict, settings: ChatSettings, where: str) -> list[dict[str, str]]:
    field = settings.messages_field
    if field is None:
        field = next((f for f in ("messages", "conversations") if f in row), None)
    if field is None or field not in row:
        _need(row, [settings.messages_field or "messages"], where, "chat")
    turns = row[field]
    if not isinstance(turns, list) or not turns:
        raise TuneError(
            f"'{field}' is empty or not a list.",
            where=where,
            fix="each conversation needs at least one user and one assistant turn; remove it.",
        )
    messages = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise TuneError(f"turn {i} is not an object.", where=where)
        raw_role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if raw_role is None or content is None:
            raise TuneError(
                f"turn {i} has keys {sorted(turn)}; expected role/content (OpenAI) or "
                "from/value (ShareGPT).",
                where=where,
                fix='write each turn as {"role": ..., "content": ...}.',
            )
        role = ROLES.get(str(raw_role).lower())
        if role is None:
            raise TuneError(
                f"turn {i} has role '{raw_role}', which format 'chat' does not train on "
                f"(supported: {', '.join(sorted(ROLES))}).",
                where=where,
                fix="tool-calling roles (function_call, observation, tool) are not supported "
                "yet: drop these conversations or map the roles before training.",
            )
        messages.append({"role": role, "content": _text(content, where, f"turn {i} content")})
    if settings.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": settings.system_prompt})
    if not any(m["role"] == "assistant" for m in messages):
        raise TuneError(
            "conversation has no assistant turn, so nothing would be trained.",
            where=where,
            fix="remove it or add the assistant reply.",
        )
    return messages


def normalize_alpaca(row: dict, settings: AlpacaSettings, where: str) -> list[dict[str, str]]:
    _need(row, ["instruction", "output"], where, "alpaca")
    prompt = _text(row["instruction"], where, "instruction")
    extra = row.get("input")
    if extra:
        prompt += "\n\n" + _text(extra, where, "input")
    messages = []
    system = row.get("system") or settings.system_prompt
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": _text(row["output"], where, "output")})
    return messages


# -- the formats ----------------------------------------------------------------------------------
class ChatFormat(DataFormat):
    """A conversation rendered through the chat template; assistant turns are trained."""

    chat = True

    def __init__(self, settings, tokenizer=None, **kwargs):
        super().__init__(settings, tokenizer, **kwargs)
        if tokenizer is not None:
            from tune.data.templates import use_template

            use_template(tokenizer, settings.template, f"{self.where} template")

    def check(self, row, where):
        return normalize_chat(row, self.settings, where)

    def encode(self, record, where):
        from tune.data.tokenize import tokenize_chat

        example = tokenize_chat(self.tokenizer, record, self.settings.train_on_prompt, where)
        return self.fit([example], self.settings.truncation)

    def render_prompt(self, text):
        messages = []
        if self.settings.system_prompt:
            messages.append({"role": "system", "content": self.settings.system_prompt})
        messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


class AlpacaFormat(ChatFormat):
    """instruction (+ input) as the user turn, output as the assistant turn."""

    def check(self, row, where):
        return normalize_alpaca(row, self.settings, where)


class PromptCompletionFormat(DataFormat):
    """BOS prompt completion EOS, no template; the completion is trained."""

    def check(self, row, where):
        s = self.settings
        _need(row, [s.prompt_field, s.completion_field], where, "prompt_completion")
        return (
            _text(row[s.prompt_field], where, s.prompt_field),
            _text(row[s.completion_field], where, s.completion_field),
        )

    def encode(self, record, where):
        from tune.data.tokenize import tokenize_pair

        s = self.settings
        example = tokenize_pair(self.tokenizer, *record, s.train_on_prompt, s.add_eos)
        return self.fit([example], s.truncation)


class TextFormat(DataFormat):
    """Plain text, every token trained; long texts optionally split into sliding windows."""

    def check(self, row, where):
        _need(row, [self.settings.text_field], where, "text")
        return _text(row[self.settings.text_field], where, self.settings.text_field)

    def encode(self, record, where):
        from tune.data.tokenize import sliding_windows, tokenize_pair

        s = self.settings
        example = tokenize_pair(self.tokenizer, "", record, True, s.add_eos)
        if s.stride and len(example["input_ids"]) > self.max_seq_len:
            windows = sliding_windows(example["input_ids"], self.max_seq_len, s.stride)
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
