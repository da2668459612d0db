"""Named chat templates (with tool calling), their end-of-turn tokens, and exact masking.

The masked-prompt labels come from the rendered text itself: the template is rendered once for
the whole conversation, each assistant turn's character span is found by rendering the prefix
with a generation prompt, and tokens are labelled by their character offsets. The tokens are
therefore exactly those the model sees at inference, whatever the template. Assistant turns
(including their tool calls) are trained; tool results are prompt.
"""

from __future__ import annotations

from typing import Any

from tune.errors import TuneError

# Llama 3.1: tools go into the system turn as JSON, a tool call is the assistant's JSON
# {"name", "parameters"}, a tool result is an `ipython` turn (Meta's prompt format).
LLAMA_31 = (
    "{{- bos_token }}"
    "{%- if tools %}"
    "{%- set tool_text = 'You have access to the following functions. To call a function, reply "
    'with JSON in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.\\n\\n' %}"
    "{%- for t in tools %}{%- set tool_text = tool_text + (t | tojson) + '\\n' %}{%- endfor %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] | trim + '\\n\\n' %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nEnvironment: ipython\\n\\n' + system "
    "+ tool_text | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message['content'] | trim "
    "+ '<|eot_id|>' }}"
    "{%- elif message.get('tool_calls') %}"
    "{%- if message['tool_calls'] | length != 1 %}"
    "{{- raise_exception('llama-3.1 template: one tool call per assistant turn') }}"
    "{%- endif %}"
    "{%- set call = message['tool_calls'][0]['function'] %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' + '{\"name\": \"' + call['name'] "
    "+ '\", \"parameters\": ' + (call['arguments'] | tojson) + '}' + '<|eot_id|>' }}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# ChatML with Hermes/Qwen2.5 tool calling: <tools> in the system turn, <tool_call> JSON in the
# assistant turn, consecutive tool results grouped into one user turn of <tool_response>s.
CHATML = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for t in tools %}{{- '\\n' + (t | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": '
    '<function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and tools and loop.first %}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- if (loop.first and message['content']) or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' "
    "+ (call['function']['arguments'] | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
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
        "tools": True,
    },
    "chatml": {
        "template": CHATML,
        "tokens": ["<|im_start|>", "<|im_end|>"],
        "stop": "<|im_end|>",
        "tools": True,
    },
    "mistral": {"template": MISTRAL, "tokens": ["[INST]", "[/INST]"], "stop": None, "tools": False},
}

ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "system": "system",
}
# Tool-calling roles: OpenAI `tool`, ShareGPT (LLaMA-Factory) `function_call` / `observation`.
TOOL_ROLES = {
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
    "function_call": "tool_call",
}


def use_template(tokenizer: Any, name: str, where: str) -> None:
    """Set the tokenizer's chat template from `name` ("tokenizer" keeps its own).

    A named template also makes its end-of-turn token the tokenizer's eos (the base eos is
    kept in `tune_base_eos` for plain-text examples), so the saved tokenizer, and the generation
    config `end_of_turn_ids` gives, stop where the template ends a reply.
    """
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
    stop = spec["stop"]
    if stop and tokenizer.eos_token != stop:
        if not hasattr(tokenizer, "tune_base_eos"):
            tokenizer.tune_base_eos = tokenizer.eos_token
        tokenizer.eos_token = stop


def base_eos_id(tokenizer: Any) -> int | None:
    """The eos a plain-text example ends with: the base model's, even after a named template."""
    base = getattr(tokenizer, "tune_base_eos", None)
    return tokenizer.convert_tokens_to_ids(base) if base else tokenizer.eos_token_id


def end_of_turn_ids(model: Any, tokenizer: Any) -> list[int] | int | None:
    """Put the tokenizer's eos into `model.generation_config.eos_token_id` (a list when the base
    had another), so the saved model stops at the end of a turn in plain `generate`.

    Called when the model and the formatted data meet (the trainer, `tune merge`); returns the
    new eos ids.
    """
    config = getattr(model, "generation_config", None)
    eos = tokenizer.eos_token_id
    if config is None or eos is None:
        return None
    old = config.eos_token_id
    ids = [] if old is None else ([old] if isinstance(old, int) else list(old))
    if eos not in ids:
        ids.append(eos)
        config.eos_token_id = ids[0] if len(ids) == 1 else ids
    return config.eos_token_id


def can_render_tools(tokenizer: Any, name: str) -> bool:
    if name != "tokenizer":
        return bool(TEMPLATES[name]["tools"])
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates: the one for tools counts
        template = template.get("tool_use") or template.get("default") or ""
    return "tools" in template


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, Any]], where: str, tools: list | None = None
):
    """Render `messages`; return (text, [(start, end) of each assistant reply incl. its end tag])."""
    text = render(tokenizer, messages, False, where, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], True, where, tools)
        upto = render(tokenizer, messages[: i + 1], False, where, tools)
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


def render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
    where: str,
    tools: list | None = None,
) -> str:
    """The conversation through the tokenizer's chat template, as text; a template that rejects
    it is one paragraph naming the row (`where`). Public as `tune.plugin.chat.render`."""
    extra = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
        )
    except Exception as exc:  # jinja raises TemplateError and friends for bad conversations
        raise TuneError(
            f"the chat template rejected this conversation: {str(exc).splitlines()[0]}.",
            where=where,
            fix="check the roles and their order, or pick another template.",
        ) from None


def user_prompt(tokenizer: Any, text: str, system_prompt: str | None = None) -> str:
    """A `[generate]` prompt as a chat-trained model sees it: (the system prompt and) one user
    turn through the chat template, with the generation prompt. Public as
    `tune.plugin.chat.user_prompt`, for formats' `render_prompt`."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": text})
    return render(tokenizer, messages, True, "[generate] prompts")
