"""Rows to normalized conversations, without torch: OpenAI and ShareGPT chats, tool calls.

One form for every source: OpenAI role/content messages; tool calls as OpenAI `tool_calls`
(arguments a dict), tool results as role `tool`, the row's tools as OpenAI function tools.
The checks name the real cause (role order, `content: null`, empty replies) so `tune validate`
reports them before a model is loaded.
"""

from __future__ import annotations

import json
from typing import Any

from tune.data.templates import ROLES, TEMPLATES, TOOL_ROLES
from tune.errors import TuneError


# -- checking rows ---------------------------------------------------------------------
def need(row: dict, fields: list[str], where: str, fmt: str) -> None:
    """Every field present and not null, or one paragraph saying which is absent or null."""
    absent = [f for f in fields if f not in row]
    null = [f for f in fields if f in row and row[f] is None]
    if absent:
        raise TuneError(
            f"row has no {', '.join(repr(m) for m in absent)} for format '{fmt}'; "
            f"it has {sorted(row)}.",
            where=where,
            fix=f"format '{fmt}' expects {fields}; pick the format that matches the data "
            "([data] format) or rename the fields.",
        )
    if null:
        raise TuneError(
            f"row's {', '.join(repr(m) for m in null)} {'is' if len(null) == 1 else 'are'} null.",
            where=where,
            fix="give every row its text (an empty string if it has none), or remove the row.",
        )


def text_of(value: Any, where: str, field: str) -> str:
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


def normalize_chat(row: dict, settings: Any, where: str) -> Any:
    """One conversation in one form: OpenAI role/content turns; tool calls as OpenAI
    `tool_calls` (arguments a dict), tool results as role `tool`; the row's tools as a list of
    `{"type": "function", "function": ...}`. Returns the message list, or
    `{"messages", "tools"}` when the row has tools, or `{"drop": reason}` (empty replies)."""
    field = settings.messages_field
    if field is None:
        field = next((f for f in ("messages", "conversations") if f in row), None)
    if field is None or field not in row:
        need(row, [settings.messages_field or "messages"], where, "chat")
    turns = row[field]
    if not isinstance(turns, list) or not turns:
        raise TuneError(
            f"'{field}' is empty or not a list.",
            where=where,
            fix="each conversation needs at least one user and one assistant turn; remove it.",
        )
    messages: list[dict[str, Any]] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        message = _turn(turn, i, where)
        last = messages[-1] if messages else None
        if message["role"] == "tool_call":  # ShareGPT function_call: the assistant's call
            calls = message["tool_calls"]
            if last and last["role"] == "assistant" and not last.get("tool_calls"):
                last["tool_calls"] = calls
                continue
            message = {"role": "assistant", "content": "", "tool_calls": calls}
        messages.append(message)
    if settings.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": settings.system_prompt})
    _check_order(messages, where)
    tools = _tools(row.get(settings.tools_field), where, settings.tools_field)
    uses_tools = tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if (
        uses_tools
        and settings.template != "tokenizer"
        and not TEMPLATES[settings.template]["tools"]
    ):
        raise TuneError(
            f"this conversation uses tools, and template '{settings.template}' cannot render "
            "tool calls, tool results or a tools list.",
            where=where,
            fix='use template = "chatml" or "llama-3.1" (or the tokenizer\'s own template if it '
            "supports tools), or drop the tool-calling rows.",
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise TuneError(
            "conversation has no assistant turn, so nothing would be trained.",
            where=where,
            fix="remove it or add the assistant reply.",
        )
    empty = [
        i
        for i, m in enumerate(messages)
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls")
    ]
    if empty:
        if settings.empty_replies == "error":
            raise TuneError(
                f"the assistant reply in message {empty[0]} is empty or only whitespace.",
                where=where,
                fix='remove the conversation, or set empty_replies = "drop" in [data] to drop '
                "such conversations (they are counted).",
            )
        return {"drop": "empty_replies"}
    return {"messages": messages, "tools": tools} if tools else messages


def _turn(turn: Any, i: int, where: str) -> dict[str, Any]:
    return message(turn, where, f"turn {i}")


def content(value: Any, where: str, what: str) -> str:
    """A message's text: a string, or OpenAI content parts that are all text."""
    return text_of(value, where, what)


def message(turn: Any, where: str, what: str = "turn", tools: bool = True) -> dict[str, Any]:
    """One turn, OpenAI (role/content) or ShareGPT (from/value), as a normalized message.

    Roles are mapped to user/assistant/system (and, with `tools`, tool results to role "tool",
    ShareGPT's function_call to role "tool_call", which the caller folds into an assistant
    message; assistant `tool_calls` are kept with arguments as dicts). `what` names the turn in
    messages ("turn 3", "'chosen' message 0"). Public as `tune.plugin.chat.message`.
    """
    if not isinstance(turn, dict):
        raise TuneError(
            f"{what} is not a message object.",
            where=where,
            fix='write it as {"role": ..., "content": ...}.',
        )
    raw_role = turn.get("role", turn.get("from"))
    key = "content" if "content" in turn else "value"
    text = turn.get(key)
    if raw_role is None or key not in turn:
        raise TuneError(
            f"{what} has keys {sorted(turn)}; expected role/content (OpenAI) or "
            "from/value (ShareGPT).",
            where=where,
            fix='write each turn as {"role": ..., "content": ...}.',
        )
    name = str(raw_role).lower()
    role = ROLES.get(name) or (TOOL_ROLES.get(name) if tools else None)
    if role is None:
        known = sorted(ROLES) + (sorted(TOOL_ROLES) if tools else [])
        raise TuneError(
            f"{what} has role '{raw_role}', which is not a chat role here "
            f"(supported: {', '.join(known)}).",
            where=where,
            fix="map the role to user/assistant/system"
            + ("/tool (or ShareGPT human/gpt/function_call/observation)" if tools else "")
            + ", or drop these conversations.",
        )
    calls = turn.get("tool_calls") or (
        [turn["function_call"]] if isinstance(turn.get("function_call"), dict) else None
    )
    if role == "tool_call":
        return {"role": role, "tool_calls": _calls(text, where, f"{what} (role '{raw_role}')")}
    if tools and calls is not None and role == "assistant":
        reply = "" if text is None else text_of(text, where, f"{what} content")
        return {
            "role": role,
            "content": reply,
            "tool_calls": _calls(calls, where, f"{what} (role '{raw_role}') tool_calls"),
        }
    if text is None:
        raise TuneError(
            f"{what} (role '{raw_role}') has {key}: null.",
            where=where,
            fix="give the turn its text"
            + (f"; only an assistant turn with tool_calls may have {key}: null." if tools else "."),
        )
    return {"role": role, "content": text_of(text, where, f"{what} {key}")}


def _json_value(value: Any, where: str, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise TuneError(
            f"{what} is not valid JSON ({exc.msg} at column {exc.colno}).",
            where=where,
            fix="write it as a JSON object (or a JSON string of one).",
        ) from None


def _calls(value: Any, where: str, what: str) -> list[dict[str, Any]]:
    """Tool calls as `[{"type": "function", "function": {"name", "arguments": dict}}]`."""
    value = _json_value(value, where, what)
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        fn = item.get("function", item) if isinstance(item, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise TuneError(
                f"{what} must hold tool calls with a 'name' (and 'arguments'), got {item!r:.80}.",
                where=where,
                fix="tool-calling roles carry JSON calls: write one as "
                '{"name": "fn", "arguments": {...}} (ShareGPT) or '
                '{"type": "function", "function": {"name": ..., "arguments": "..."}} (OpenAI).',
            )
        args = _json_value(
            fn.get("arguments", fn.get("parameters", {})), where, f"{what} arguments"
        )
        if not isinstance(args, dict):
            raise TuneError(f"{what}: arguments must be a JSON object.", where=where)
        calls.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return calls


def _tools(value: Any, where: str, field: str) -> list[dict[str, Any]] | None:
    """The row's tool definitions as OpenAI function tools, or None when it has none."""
    if value is None or value == "" or value == []:
        return None
    value = _json_value(value, where, f"'{field}'")
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise TuneError(
            f"'{field}' must be a list of tool definitions (JSON objects).",
            where=where,
            fix='give tools as [{"name": ..., "description": ..., "parameters": {...}}] '
            '(or OpenAI\'s [{"type": "function", "function": {...}}]).',
        )
    return [t if t.get("type") == "function" and "function" in t else _as_tool(t) for t in value]


def _as_tool(spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": spec}


def _check_order(messages: list[dict[str, Any]], where: str) -> None:
    """Role order a chat template and the masking rely on, with the real cause named."""
    turns = [m for m in messages if m["role"] != "system"]
    if turns and turns[0]["role"] == "assistant":
        raise TuneError(
            "the conversation starts with an assistant turn (before any user turn).",
            where=where,
            fix="add the user turn that the first reply answers, or remove that reply.",
        )
    if turns and turns[0]["role"] == "tool":
        raise TuneError(
            "a tool result (turn 0) does not follow an assistant tool call.",
            where=where,
            fix="put the function_call / tool_calls turn before its observation / tool turn.",
        )
    for k, (prev, cur) in enumerate(zip(turns, turns[1:], strict=False)):
        if prev["role"] == cur["role"] == "user":
            raise TuneError(
                f"two user turns in a row (turns {k} and {k + 1}, not counting system turns).",
                where=where,
                fix="merge them into one user turn, or add the assistant reply between them.",
            )
        if cur["role"] == "tool" and not (prev["role"] == "tool" or prev.get("tool_calls")):
            raise TuneError(
                f"a tool result (turn {k + 1}) does not follow an assistant tool call.",
                where=where,
                fix="put the function_call / tool_calls turn before its observation / tool turn.",
            )


def normalize_alpaca(row: dict, settings: Any, where: str) -> Any:
    need(row, ["instruction", "output"], where, "alpaca")
    prompt = text_of(row["instruction"], where, "instruction")
    extra = row.get("input")
    if extra:
        prompt += "\n\n" + text_of(extra, where, "input")
    messages = []
    system = row.get("system") or settings.system_prompt
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    reply = text_of(row["output"], where, "output")
    if not reply.strip():
        if settings.empty_replies == "error":
            raise TuneError(
                "'output' is empty or only whitespace.",
                where=where,
                fix='remove the row, or set empty_replies = "drop" in [data].',
            )
        return {"drop": "empty_replies"}
    messages.append({"role": "assistant", "content": reply})
    return messages
