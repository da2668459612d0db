"""Data format `preference`: a prompt and two replies, rendered through the chat template.

Rows come in the OpenAI/TRL layout (`prompt` + `chosen` + `rejected`, each a string, a message
or a message list) or the ShareGPT layout LLaMA-Factory ships (`conversations` + `chosen` and
`rejected` messages with from/value). Messages are read and rendered by tune's own chat helpers
(`tune.plugin.chat`), as every chat format reads them. Checking needs no tokenizer and no torch,
so `tune validate` runs it on every row.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from tune.plugin import IGNORE, DataFormat, Settings, TuneError, chat

Messages = list[dict[str, str]]


class PreferenceSettings(Settings):
    """Keys of [data] for format `preference`."""

    template: Literal["tokenizer", "llama-3.1", "chatml"] = Field(
        "tokenizer", description="the tokenizer's own chat template, or a named one"
    )
    system_prompt: str | None = Field(None, description="a system turn for rows without one")
    max_prompt_len: int | None = Field(
        None, gt=0, description="keep at most this many prompt tokens (the prompt's end)"
    )
    truncation: Literal["truncate", "drop"] = Field(
        "truncate",
        description="a sequence longer than max_seq_len: keep the prompt's end and the "
        "replies' start (truncate), or drop the pair",
    )


def _fail(message: str, where: str, fix: str) -> TuneError:
    return TuneError(message, where=where, fix=fix)


def _message(turn: Any, where: str, what: str) -> dict[str, str]:
    """One OpenAI (role/content) or ShareGPT (from/value) turn as a {role, content} message;
    no tool roles (a pair compares plain replies)."""
    return chat.message(turn, where, what, tools=False)


def _reply(row: dict, key: str, where: str) -> Messages:
    """`chosen`/`rejected` as assistant messages: a string, a message or a message list."""
    fix = (
        f"every pair needs a non-empty '{key}' reply: a string, a message "
        '{"role": "assistant", "content": ...} or a list of messages; fix or remove the row.'
    )
    if key not in row:
        raise _fail(f"row has no '{key}' reply; it has {sorted(row)}.", where, fix)
    if row[key] is None:
        raise _fail(f"row's '{key}' reply is null.", where, fix)
    value = row[key]
    if isinstance(value, str):
        messages = [{"role": "assistant", "content": value}]
    elif isinstance(value, dict):
        messages = [_message(value, where, f"'{key}'")]
    elif isinstance(value, list):
        messages = [_message(t, where, f"'{key}' message {i}") for i, t in enumerate(value)]
    else:
        raise _fail(f"'{key}' is a {type(value).__name__}.", where, fix)
    if not messages or not any(m["content"].strip() for m in messages):
        raise _fail(f"'{key}' is empty.", where, fix)
    if messages[-1]["role"] != "assistant":
        raise _fail(
            f"'{key}' ends with a {messages[-1]['role']} message, not the assistant's reply.",
            where,
            f"end '{key}' with the assistant message being compared.",
        )
    return messages


def _prompt(row: dict, where: str) -> Messages:
    if "prompt" in row and row["prompt"] is not None:
        value = row["prompt"]
        if isinstance(value, str):
            messages = [{"role": "user", "content": value}] if value.strip() else []
        elif isinstance(value, list):
            messages = [_message(t, where, f"prompt message {i}") for i, t in enumerate(value)]
        else:
            raise _fail(
                f"'prompt' is a {type(value).__name__}.",
                where,
                "give the prompt as a string or a list of messages.",
            )
    else:
        field = next((f for f in ("conversations", "messages") if f in row), None)
        if field is None:
            raise _fail(
                f"row has no prompt ('prompt', 'conversations' or 'messages'); it has "
                f"{sorted(row)}.",
                where,
                "format 'preference' expects prompt/chosen/rejected (TRL) or conversations + "
                "chosen/rejected (ShareGPT).",
            )
        turns = row[field]
        if not isinstance(turns, list):
            raise _fail(f"'{field}' is not a list.", where, "give the prompt turns as a list.")
        messages = [_message(t, where, f"{field} turn {i}") for i, t in enumerate(turns)]
    if not messages:
        raise _fail("the prompt is empty.", where, "give each pair a prompt.")
    system = row.get("system")
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _implicit_prompt(row: dict, where: str):
    """TRL's implicit prompt: chosen and rejected are whole conversations sharing their start
    (as in trl-lib/ultrafeedback_binarized); the shared messages are the prompt."""
    chosen = [_message(t, where, f"'chosen' message {i}") for i, t in enumerate(row["chosen"])]
    rejected = [
        _message(t, where, f"'rejected' message {i}") for i, t in enumerate(row["rejected"])
    ]
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], {**row, "chosen": chosen[n:], "rejected": rejected[n:]}


def normalize_pair(row: dict, settings: PreferenceSettings, where: str):
    """(prompt messages, chosen messages, rejected messages) of one row."""
    if not isinstance(row, dict):
        raise _fail("row is not a JSON object.", where, "write one object per line.")
    implicit = not any(k in row for k in ("prompt", "conversations", "messages"))
    if implicit and isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
        prompt, row = _implicit_prompt(row, where)
        if not prompt:
            raise _fail(
                "row has no prompt, and 'chosen' and 'rejected' share no leading messages.",
                where,
                "give a 'prompt', or whole conversations in chosen/rejected that start alike.",
            )
        return prompt, _reply(row, "chosen", where), _reply(row, "rejected", where)
    prompt = _prompt(row, where)
    if settings.system_prompt and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": settings.system_prompt})
    return prompt, _reply(row, "chosen", where), _reply(row, "rejected", where)


def tokenize_reply(tokenizer: Any, prompt: Messages, reply: Messages, where: str):
    """Token ids of prompt + reply and how many of them are the prompt.

    The conversation is rendered once; the reply starts where the prompt rendered with a
    generation prompt ends, and tokens are assigned by their character offsets, so the tokens
    are exactly those the model sees at inference.
    """
    head = chat.render(tokenizer, prompt, True, where)
    text = chat.render(tokenizer, prompt + reply, False, where)
    if not text.startswith(head):
        raise _fail(
            "the chat template does not render the prompt as a prefix of the whole "
            "conversation, so the reply cannot be located.",
            where,
            'use a named template (template = "llama-3.1" or "chatml").',
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    n_prompt = sum(1 for start, _ in enc["offset_mapping"] if start < len(head))
    return ids, n_prompt


class PreferenceFormat(DataFormat):
    """Rows -> pair examples: chosen and rejected ids with labels (prompt tokens IGNORE)."""

    chat = True

    def __init__(self, settings, tokenizer=None, **kwargs):
        super().__init__(settings, tokenizer, **kwargs)
        if tokenizer is not None:
            chat.use_template(tokenizer, settings.template, f"{self.where} template")

    def check(self, row, where):
        return normalize_pair(row, self.settings, where)

    def encode(self, record, where):
        prompt, chosen, rejected = record
        c_ids, c_prompt = tokenize_reply(self.tokenizer, prompt, chosen, where)
        r_ids, r_prompt = tokenize_reply(self.tokenizer, prompt, rejected, where)
        n = min(c_prompt, r_prompt)  # the shared prompt (as TRL: the common prefix)
        while n > 0 and c_ids[:n] != r_ids[:n]:
            n -= 1
        fitted = self.fit_pair(c_ids[:n], c_ids[n:], r_ids[n:])
        if fitted is None:
            return []
        p, c, r = fitted
        return [
            {
                "chosen_ids": p + c,
                "chosen_labels": [IGNORE] * len(p) + c,
                "rejected_ids": p + r,
                "rejected_labels": [IGNORE] * len(p) + r,
            }
        ]

    def fit_pair(self, p: list[int], c: list[int], r: list[int]):
        """The length policy: keep the prompt's end (and its first token, usually BOS) and the
        replies' start; counted in the summary."""
        s, limit = self.settings, self.max_seq_len
        if not c or not r:
            self.counts["dropped"] += 1
            return None
        if s.max_prompt_len and len(p) > s.max_prompt_len:
            p = p[:1] + p[len(p) - s.max_prompt_len + 1 :]
            self.counts["prompt_truncated"] += 1
        if len(p) + max(len(c), len(r)) > limit:
            if s.truncation == "drop":
                self.counts["dropped"] += 1
                return None
            room = max(limit // 2, limit - max(len(c), len(r)))
            if len(p) > room:  # the prompt gives way first, down to half the budget
                p = p[:1] + p[len(p) - room + 1 :]
                self.counts["prompt_truncated"] += 1
            if len(p) + max(len(c), len(r)) > limit:
                c, r = c[: limit - len(p)], r[: limit - len(p)]
                self.counts["truncated"] += 1
        return p, c, r

    def render_prompt(self, text):
        return chat.user_prompt(self.tokenizer, text, self.settings.system_prompt)


class KTOSettings(Settings):
    """Keys of [data] for format `kto`."""

    template: Literal["tokenizer", "llama-3.1", "chatml"] = Field(
        "tokenizer", description="the tokenizer's own chat template, or a named one"
    )
    system_prompt: str | None = Field(None, description="a system turn for rows without one")
    label_field: str = Field("label", description="the row's boolean: is the reply desirable")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="a sequence longer than max_seq_len: cut the reply, or drop it"
    )


def normalize_kto(row: dict, settings: KTOSettings, where: str):
    """(prompt messages, reply messages, desirable) of one row: a conversation whose last turn
    is the assistant's (messages/conversations), or TRL's prompt/completion, and a boolean."""
    if not isinstance(row, dict):
        raise _fail("row is not a JSON object.", where, "write one object per line.")
    label = row.get(settings.label_field)
    if not isinstance(label, bool):
        shown = "missing" if label is None else f"{label!r} ({type(label).__name__})"
        raise _fail(
            f"'{settings.label_field}' is {shown}; format 'kto' needs a boolean.",
            where,
            f'give every row "{settings.label_field}": true (a desirable reply) or false.',
        )
    if "completion" in row:
        prompt = _prompt(row, where)
        reply = _reply(row, "completion", where)
    else:
        field = next((f for f in ("messages", "conversations") if f in row), None)
        if field is None or not isinstance(row[field], list) or not row[field]:
            raise _fail(
                f"row has no conversation ('messages' or 'conversations'); it has {sorted(row)}.",
                where,
                "format 'kto' expects messages whose last turn is the assistant's, or "
                "prompt/completion, with a boolean label.",
            )
        turns = [_message(t, where, f"{field} turn {i}") for i, t in enumerate(row[field])]
        if turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
            raise _fail(
                "the last turn is not a non-empty assistant reply, so there is nothing to label.",
                where,
                "end each conversation with the assistant reply that the label judges.",
            )
        prompt, reply = turns[:-1], turns[-1:]
        if not prompt:
            raise _fail("the conversation has no prompt.", where, "add the user turn.")
        system = row.get("system")
        if isinstance(system, str) and system.strip() and prompt[0]["role"] != "system":
            prompt.insert(0, {"role": "system", "content": system})
    if settings.system_prompt and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": settings.system_prompt})
    return prompt, reply, label


class KTOFormat(DataFormat):
    """Rows -> {prompt_ids, completion_ids, desirable}; the objective pairs prompts with other
    rows' completions for the KL estimate, so prompt and reply are kept apart."""

    chat = True

    def __init__(self, settings, tokenizer=None, **kwargs):
        super().__init__(settings, tokenizer, **kwargs)
        if tokenizer is not None:
            chat.use_template(tokenizer, settings.template, f"{self.where} template")

    def check(self, row, where):
        return normalize_kto(row, self.settings, where)

    def encode(self, record, where):
        prompt, reply, desirable = record
        ids, n_prompt = tokenize_reply(self.tokenizer, prompt, reply, where)
        p, c = ids[:n_prompt], ids[n_prompt:]
        if len(ids) > self.max_seq_len:
            if self.settings.truncation == "drop":
                self.counts["dropped"] += 1
                return []
            room = max(self.max_seq_len // 2, self.max_seq_len - len(c))
            if len(p) > room:
                p = p[:1] + p[len(p) - room + 1 :]
                self.counts["prompt_truncated"] += 1
            c = c[: self.max_seq_len - len(p)]
            self.counts["truncated"] += 1
        if not c:
            self.counts["dropped"] += 1
            return []
        self.counts["desirable" if desirable else "undesirable"] += 1
        return [{"prompt_ids": p, "completion_ids": c, "desirable": bool(desirable)}]

    render_prompt = PreferenceFormat.render_prompt
