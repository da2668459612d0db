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


# -- checking a Modelfile: its TEMPLATE rendered with Go-template semantics -------------------
# Ollama renders TEMPLATE with Go's text/template. What chat templates use of it is a small
# subset, implemented here: text, {{ }} actions with {{- -}} trimming, `range [$i, $x :=] PIPE`,
# `if/else if/else/end`, `$v := PIPE`, fields (.Messages .Role .Content, $.Messages), variables,
# string and number literals, and the functions eq, ne, not, and, or, len, slice, index.


class GoTemplateError(ValueError):
    """A template outside the subset (or malformed): the check says so instead of guessing."""


def _go_lex(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], with Go's trim markers ({{- and -}}) applied."""
    parts: list[tuple[str, str]] = []
    at, trim_next = 0, False
    while True:
        start = template.find("{{", at)
        text = template[at:] if start < 0 else template[at:start]
        if trim_next:
            text = text.lstrip()
        if start < 0:
            parts.append(("text", text))
            return parts
        end = template.find("}}", start)
        if end < 0:
            raise GoTemplateError("an action has no closing }}")
        inner = template[start + 2 : end]
        if inner[:1] == "-" and inner[1:2].isspace():  # {{- trims the space before
            text, inner = text.rstrip(), inner[2:]
        trim_next = inner[-1:] == "-" and inner[-2:-1].isspace()  # -}} the space after
        if trim_next:
            inner = inner[:-2]
        parts += [("text", text), ("action", inner.strip())]
        at = end + 2


def _go_tokens(action: str) -> list[str]:
    import re

    return re.findall(r'"(?:\\.|[^"\\])*"|`[^`]*`|:=|[(),]|[^\s(),]+', action)


def _go_parse(parts: list[tuple[str, str]]) -> list[Any]:
    """A tree of nodes: ("text", s), ("out", tokens), ("set", var, tokens),
    ("range", vars, tokens, body, else_body), ("if", [(tokens, body)...], else_body)."""
    pos = 0

    def block(stop: tuple[str, ...]) -> tuple[list[Any], str]:
        nonlocal pos
        nodes: list[Any] = []
        while pos < len(parts):
            kind, value = parts[pos]
            pos += 1
            if kind == "text":
                if value:
                    nodes.append(("text", value))
                continue
            if value.startswith("/*"):
                continue
            words = _go_tokens(value)
            head = words[0] if words else ""
            if head in ("end", "else") and head in stop:
                return nodes, value
            if head == "range":
                rest = words[1:]
                names: list[str] = []
                if ":=" in rest:
                    k = rest.index(":=")
                    names = [w.rstrip(",") for w in rest[:k] if w != ","]
                    rest = rest[k + 1 :]
                body, ended = block(("end", "else"))
                other: list[Any] = []
                if ended.startswith("else"):
                    other, _ = block(("end",))
                nodes.append(("range", names, rest, body, other))
            elif head == "if":
                branches = []
                cond = words[1:]
                other = []
                while True:
                    body, ended = block(("end", "else"))
                    branches.append((cond, body))
                    if ended == "end":
                        break
                    more = _go_tokens(ended)[1:]
                    if more and more[0] == "if":
                        cond = more[1:]
                        continue
                    other, _ = block(("end",))
                    break
                nodes.append(("if", branches, other))
            elif len(words) >= 3 and words[0].startswith("$") and words[1] in (":=", "="):
                nodes.append(("set", words[0], words[2:]))
            elif head in ("end", "else", "with", "define", "template", "block"):
                raise GoTemplateError(f"{{{{ {value} }}}} is outside the subset checked here")
            else:
                nodes.append(("out", words))
        if stop:
            raise GoTemplateError("a block has no {{ end }}")
        return nodes, ""

    nodes, _ = block(())
    return nodes


def _go_truth(value: Any) -> bool:
    return not (value is None or value is False or value == 0 or value in ("", [], {}))


def _go_eval(words: list[str], dot: Any, scope: dict[str, Any]) -> Any:
    """A pipeline without `|`: a value, or a function applied to the values after it."""
    funcs = {
        "eq": lambda a, *b: any(a == x for x in b),
        "ne": lambda a, b: a != b,
        "not": lambda a: not _go_truth(a),
        "and": lambda *a: next((x for x in a if not _go_truth(x)), a[-1]),
        "or": lambda *a: next((x for x in a if _go_truth(x)), a[-1]),
        "len": lambda a: len(a),
        "slice": lambda a, *i: a[i[0] : i[1]] if len(i) > 1 else a[i[0] :],
        "index": lambda a, i: a[i],
    }
    args, i = [], 0
    while i < len(words):
        word = words[i]
        if word == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(words[j], 0)
                j += 1
            args.append(_go_eval(words[i + 1 : j - 1], dot, scope))
            i = j
            continue
        args.append(("fn", word) if word in funcs else _go_value(word, dot, scope))
        i += 1
    if args and isinstance(args[0], tuple) and args[0][0] == "fn":
        return funcs[args[0][1]](*args[1:])
    if len(args) != 1:
        raise GoTemplateError(f"cannot evaluate {' '.join(words)!r}")
    return args[0]


def _go_value(word: str, dot: Any, scope: dict[str, Any]) -> Any:
    import json

    if word.startswith('"'):
        return json.loads(word)
    if word.startswith("`"):
        return word[1:-1]
    if word in ("true", "false"):
        return word == "true"
    if word.lstrip("-").isdigit():
        return int(word)
    if word == ".":
        return dot
    if word.startswith("$"):
        name, _, path = word.partition(".")
        if name not in scope:
            raise GoTemplateError(f"undefined variable {name}")
        value = scope[name]
    elif word.startswith("."):
        value, path = dot, word[1:]
    else:
        raise GoTemplateError(f"unknown function or value {word!r}")
    for key in filter(None, path.split(".")):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def go_render(template: str, data: dict[str, Any]) -> str:
    """Render `template` (Go text/template, the subset above) on `data`."""
    tree = _go_parse(_go_lex(template))

    def run(nodes: list[Any], dot: Any, scope: dict[str, Any]) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "out":
                value = _go_eval(node[1], dot, scope)
                out.append("" if value is None else str(value))
            elif node[0] == "set":
                scope[node[1]] = _go_eval(node[2], dot, scope)
            elif node[0] == "if":
                for cond, body in node[1]:
                    if _go_truth(_go_eval(cond, dot, scope)):
                        out.append(run(body, dot, dict(scope)))
                        break
                else:
                    out.append(run(node[2], dot, dict(scope)))
            elif node[0] == "range":
                items = _go_eval(node[2], dot, scope) or []
                if not items:
                    out.append(run(node[4], dot, dict(scope)))
                for i, item in enumerate(items):
                    inner = dict(scope)
                    if len(node[1]) == 2:
                        inner[node[1][0]], inner[node[1][1]] = i, item
                    elif len(node[1]) == 1:
                        inner[node[1][0]] = item
                    out.append(run(node[3], item, inner))
        return "".join(out)

    return run(tree, data, {"$": data})


def read_modelfile(path: Path) -> dict[str, Any]:
    """FROM, TEMPLATE, SYSTEM and the stop parameters of a Modelfile tune wrote."""
    import re

    text = path.read_text(encoding="utf-8")
    found: dict[str, Any] = {"stop": []}
    for key in ("TEMPLATE", "SYSTEM"):
        m = re.search(rf'^{key} """(.*?)"""', text, flags=re.S | re.M)
        found[key] = m.group(1) if m else None
    m = re.search(r"^FROM (.+)$", text, flags=re.M)
    found["FROM"] = m.group(1).strip() if m else None
    found["stop"] = re.findall(r'^PARAMETER stop "(.*)"$', text, flags=re.M)
    return found


def verify_modelfile(path: Path, reference: Any) -> tuple[list[tuple[str, Any, str]], Path | None]:
    """Checks of an Ollama Modelfile against the trained tokenizer: the TEMPLATE, rendered with
    Go-template semantics, gives the trained chat template's text for each conversation; the
    stop parameters hold the token that ends a trained turn. Returns (checks, its GGUF)."""
    found = read_modelfile(path)
    checks: list[tuple[str, Any, str]] = []
    tok = reference.tokenizer
    gguf = None
    if found["FROM"] and found["FROM"].endswith(".gguf"):
        gguf = (path.parent / found["FROM"]).resolve()
        if not gguf.is_file():
            checks.append(("Modelfile FROM", False, f"{found['FROM']} is not beside the Modelfile"))
            gguf = None
    template = found["TEMPLATE"]
    if template is None:
        checks.append(("Ollama template", None, "no TEMPLATE: Ollama uses the GGUF's"))
    elif not reference.conversations:
        checks.append(("Ollama template", None, "the model has no chat template to compare"))
    else:
        adds_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
        bad = None
        try:
            for messages in reference.conversations:
                data = {
                    "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]
                }
                rendered = (tok.bos_token if adds_bos else "") + go_render(template, data)
                want = reference.chat_text(messages)
                if rendered != want and bad is None:
                    bad = (want, rendered)
        except (GoTemplateError, LookupError, TypeError) as exc:
            bad = ("", f"(not rendered: {exc})")
        n = len(reference.conversations)
        if bad is None:
            checks.append(("Ollama template", True, f"{n} conversations render the trained text"))
        else:
            want, got = bad
            checks.append(
                (
                    "Ollama template",
                    False,
                    f"TEMPLATE renders {got[-60:]!r} where the trained template gives "
                    f"{want[-60:]!r}",
                )
            )
    end = tok.convert_ids_to_tokens(reference.turn_end) if reference.turn_end is not None else None
    if end is None:
        checks.append(("Ollama stop", None, f"stops: {found['stop']}"))
    else:
        ok = end in found["stop"]
        checks.append(
            (
                "Ollama stop",
                ok,
                f"{end!r} {'is' if ok else 'is not'} a stop parameter ({found['stop']})",
            )
        )
    return checks, gguf
