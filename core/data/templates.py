"""Named chat templates and exact masking of what the model must learn.

The masked-prompt labels come from the rendered text itself: the template is rendered once for
the whole conversation, each assistant turn's character span is found by rendering the prefix
with a generation prompt, and tokens are labelled by their character offsets. The tokens are
therefore exactly those the model sees at inference, whatever the template.
"""

from __future__ import annotations

from typing import Any

from tune.errors import TuneError

LLAMA_31 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MISTRAL = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] + '\\n\\n' %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('mistral template: roles must alternate user/assistant') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' + (system if loop.first else '') + message['content'] + '[/INST]' }}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

TEMPLATES: dict[str, dict[str, Any]] = {
    "llama-3.1": {
        "template": LLAMA_31,
        "tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "stop": "<|eot_id|>",
    },
    "chatml": {"template": CHATML, "tokens": ["<|im_start|>", "<|im_end|>"], "stop": "<|im_end|>"},
    "mistral": {"template": MISTRAL, "tokens": ["[INST]", "[/INST]"], "stop": None},
}

ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "system": "system",
}


def use_template(tokenizer: Any, name: str, where: str) -> None:
    """Set the tokenizer's chat template from `name` ("tokenizer" keeps its own)."""
    if name == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise TuneError(
                "the tokenizer has no chat template.",
                where=where,
                fix=f"set template to one of {', '.join(TEMPLATES)} in [data].",
            )
        return
    spec = TEMPLATES[name]
    vocab = tokenizer.get_vocab()
    missing = [t for t in spec["tokens"] if t not in vocab]
    if missing:
        raise TuneError(
            f"template '{name}' needs the special tokens {missing}, which this tokenizer lacks.",
            where=where,
            fix='use the tokenizer\'s own template (template = "tokenizer") or one whose '
            "tokens it has.",
        )
    tokenizer.chat_template = spec["template"]


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]], where: str):
    """Render `messages`; return (text, [(start, end) of each assistant reply incl. its end tag])."""
    text = _render(tokenizer, messages, False, where)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], True, where)
        upto = _render(tokenizer, messages[: i + 1], False, where)
        if not (text.startswith(upto) and upto.startswith(prompt)):
            raise TuneError(
                "the chat template does not render this conversation incrementally, so the "
                "assistant turns cannot be located for masking.",
                where=where,
                fix='use a named template (template = "chatml" or "llama-3.1"), or set '
                "train_on_prompt = true.",
            )
        spans.append((len(prompt), len(upto)))
    return text, spans


def _render(tokenizer, messages, add_generation_prompt, where) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja raises TemplateError and friends for bad conversations
        raise TuneError(
            f"the chat template rejected this conversation: {str(exc).splitlines()[0]}.",
            where=where,
            fix="check the roles and their order, or pick another template.",
        ) from None
