"""An Ollama Modelfile beside the GGUF: FROM, TEMPLATE, stop tokens, default parameters.

Ollama templates are Go templates, chat templates are Jinja: no general translation exists. The
chat templates fine-tuning uses render each message as PREFIX(role) + content + SUFFIX(role)
after a fixed start, plus a generation prompt. So the trained template is rendered on messages
with marker contents, the pieces between markers are read off, a Go template is written from
them, and the pieces are checked to reproduce the Jinja rendering of several conversations.
A template of another shape (the system prompt folded into the first user turn, a default
system text) fails that check: the Modelfile then has no TEMPLATE, says why, and Ollama falls
back to the template embedded in the GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.plugin import TuneError

MARK = {r: f"\u2063{r.upper()}\u2063" for r in ("system", "user", "assistant", "user2")}


@dataclass
class Pieces:
    start: str
    pre: dict[str, str]
    suf: dict[str, str]
    gen: str

    def render(self, messages: list[dict[str, str]]) -> str:
        """What the Go template below renders for `messages` (generation prompt added)."""
        out = self.start
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            out += self.pre[m["role"]] + m["content"]
            if m["role"] != "assistant" or not last:
                out += self.suf[m["role"]]
        return out + (self.gen if messages[-1]["role"] != "assistant" else "")

    def go_template(self) -> str:
        def lit(text: str) -> str:
            return text.replace("{{", '{{ "{{" }}')

        roles = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{lit(self.pre[role])}'
            f"{{{{ .Content }}}}"
            + (
                f"{{{{ if not $last }}}}{lit(self.suf[role])}{{{{ end }}}}"
                if role == "assistant"
                else f"{lit(self.suf[role])}{{{{ if $last }}}}{lit(self.gen)}{{{{ end }}}}"
            )
            for i, role in enumerate(("system", "user", "assistant"))
        )
        return (
            f"{lit(self.start)}{{{{ range $i, $_ := .Messages }}}}"
            "{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            f"{roles}{{{{ end }}}}{{{{ end }}}}"
        )


def _jinja(template: str, bos: str, eos: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)
    return lambda messages, gen: compiled.render(
        messages=messages, add_generation_prompt=gen, bos_token=bos, eos_token=eos
    )


def derive(template: str, bos: str, eos: str) -> Pieces | None:
    """The per-role pieces of a chat template, or None when it is not of that shape."""
    render = _jinja(template, bos, eos)
    m = {k: {"role": k.rstrip("2"), "content": v} for k, v in MARK.items()}
    checks = [
        [m["user"]],
        [m["system"], m["user"]],
        [m["user"], m["assistant"], m["user2"]],
        [m["system"], m["user"], m["assistant"], m["user2"]],
    ]
    try:
        expected = [render(messages, True) for messages in checks]
        one = render([m["user"]], False)
        start_up, user_suf = one.split(MARK["user"])
        gen = expected[0][len(one) :]
        after_user = render(checks[2], False).split(MARK["user"])[1][len(user_suf) :]
        assistant_pre, rest = after_user.split(MARK["assistant"])
        between = rest.split(MARK["user2"])[0]  # assistant suffix + user prefix
        start_sp, after_system = render(checks[1], False).split(MARK["system"])
        system_and_user = after_system.split(MARK["user"])[0]  # system suffix + user prefix
    except (ValueError, IndexError, TypeError):
        return None
    # The user prefix ends both `start_up` and `between`; where it begins is found by trying each
    # split (an empty start, then the bos token alone, then the longest prefix first).
    splits = [k for k in range(len(between) + 1) if start_up.endswith(between[k:])]
    order = sorted(
        splits, key=lambda k: (start_up[: len(start_up) - len(between) + k] not in ("", bos), k)
    )
    for k in order:
        user_pre = between[k:]
        start = start_up[: len(start_up) - len(user_pre)]
        if not start_sp.startswith(start) or not system_and_user.endswith(user_pre):
            continue
        pieces = Pieces(
            start,
            {"system": start_sp[len(start) :], "user": user_pre, "assistant": assistant_pre},
            {
                "system": system_and_user[: len(system_and_user) - len(user_pre)],
                "user": user_suf,
                "assistant": between[:k],
            },
            gen,
        )
        if all(pieces.render(c) == e for c, e in zip(checks, expected, strict=True)):
            return pieces
    return None


def _quote(text: str, what: str) -> str:
    if '"""' in text:
        raise TuneError(f'the {what} contains """, which a Modelfile cannot quote.')
    return f'"""{text}"""'


def write_modelfile(
    gguf: Path,
    vocab: Any,
    settings: Any,
    ctx: Any,
    path: Path | None = None,
    shown: Path | None = None,
) -> Path:
    """The Modelfile at `path` (default: `Modelfile` beside `gguf`, which must stay beside it:
    `FROM ./<gguf name>`); `shown` is where it will be for `ollama create` (default `path`).
    Returns its path."""
    path = path or gguf.parent / "Modelfile"
    bos = vocab.tokens[vocab.special["bos"]] if "bos" in vocab.special else ""
    eos = vocab.tokens[vocab.special["eos"]] if "eos" in vocab.special else ""
    lines = [
        "# Written by `tune export --format ollama`. Create the model with:",
        f"#   ollama create {gguf.stem} -f {shown or path}",
        f"FROM ./{gguf.name}",
    ]
    pieces = derive(vocab.chat_template, bos, eos) if vocab.chat_template else None
    if pieces is not None:
        if vocab.add_bos and pieces.start.startswith(bos):
            pieces.start = pieces.start[len(bos) :]  # the tokenizer adds it already
        lines.append(f"TEMPLATE {_quote(pieces.go_template(), 'chat template')}")
    else:
        reason = "no chat template" if not vocab.chat_template else "a chat template whose shape"
        lines.append(
            f"# No TEMPLATE: the model has {reason} tune does not translate to Go; Ollama uses "
            "the chat template embedded in the GGUF."
        )
    if settings.system:
        lines.append(f"SYSTEM {_quote(settings.system, 'system prompt')}")
    for stop in vocab.stops:
        lines.append(f'PARAMETER stop "{stop}"')
    num_ctx = settings.num_ctx or int(ctx.recipe.model.max_seq_len)
    lines += [
        f"PARAMETER temperature {settings.temperature}",
        f"PARAMETER top_p {settings.top_p}",
        f"PARAMETER num_ctx {num_ctx}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
