"""Chat and text helpers for data formats, public as `tune.plugin.chat`: rows checked and
normalized the way the built-in formats do (OpenAI and ShareGPT messages, tool calls, alpaca),
conversations rendered through the chat template, the assistant spans of a rendered
conversation, named templates and their end-of-turn token, tokenization with label masks.
Every format (built-in or a plugin's) reads messages the same way. Imports no torch.
"""

from __future__ import annotations

from tune.data.normalize import (
    content,
    message,
    need,
    normalize_alpaca,
    normalize_chat,
    text_of,
)
from tune.data.templates import (
    ROLES,
    TEMPLATES,
    assistant_spans,
    base_eos_id,
    can_render_tools,
    end_of_turn_ids,
    render,
    use_template,
    user_prompt,
)
from tune.data.tokenize import sliding_windows, tokenize_chat, tokenize_pair

__all__ = [
    "ROLES",
    "TEMPLATES",
    "assistant_spans",
    "base_eos_id",
    "can_render_tools",
    "content",
    "end_of_turn_ids",
    "message",
    "need",
    "normalize_alpaca",
    "normalize_chat",
    "render",
    "sliding_windows",
    "text_of",
    "tokenize_chat",
    "tokenize_pair",
    "user_prompt",
    "use_template",
]
