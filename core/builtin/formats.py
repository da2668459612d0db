"""Data formats `chat`, `alpaca`, `prompt_completion` and `text`.

Rows are normalized without torch (so `tune validate` can check every row), then tokenized.
Chat data accepts OpenAI `messages` (role/content) and ShareGPT `conversations` (from/value).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tune.data.templates import ROLES
from tune.errors import TuneError
from tune.hookspecs import hookimpl
from tune.recipe import resolve_input

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


SETTINGS = {
    "chat": ChatSettings,
    "alpaca": AlpacaSettings,
    "prompt_completion": PromptCompletionSettings,
    "text": TextSettings,
}


@hookimpl
def tune_provide(provide):
    provide.data_format("chat", ChatSettings, doc="messages (OpenAI) or conversations (ShareGPT)")
    provide.data_format("alpaca", AlpacaSettings, doc="instruction / input / output")
    provide.data_format("prompt_completion", PromptCompletionSettings, doc="prompt + completion")
    provide.data_format("text", TextSettings, doc="plain text, every token trained")


# -- normalization (no torch) ------------------------------------------------------------------
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


def normalize(fmt: str, row: dict, settings: Any, where: str) -> Any:
    if fmt == "chat":
        return normalize_chat(row, settings, where)
    if fmt == "alpaca":
        return normalize_alpaca(row, settings, where)
    if fmt == "prompt_completion":
        _need(row, [settings.prompt_field, settings.completion_field], where, fmt)
        return (
            _text(row[settings.prompt_field], where, settings.prompt_field),
            _text(row[settings.completion_field], where, settings.completion_field),
        )
    _need(row, [settings.text_field], where, fmt)
    return _text(row[settings.text_field], where, settings.text_field)


def _files(ctx, texts: list[str], key: str) -> list[Path]:
    return [resolve_input(t, ctx.recipe.path, f"{ctx.recipe.path}: [data] {key}") for t in texts]


def read_split(fmt: str, settings: Any, ctx) -> tuple[list, list]:
    """Normalized (where, record) lists for train and eval."""
    from tune.data.files import read_rows

    data = ctx.recipe.data
    train = [
        (w, normalize(fmt, r, settings, w))
        for w, r in read_rows(_files(ctx, data.train_files, "train"))
    ]
    if data.eval_files:
        rows = read_rows(_files(ctx, data.eval_files, "eval"))
        return train, [(w, normalize(fmt, r, settings, w)) for w, r in rows]
    if data.eval_fraction:
        order = list(range(len(train)))
        random.Random(ctx.recipe.train.seed).shuffle(order)
        n_eval = max(1, round(len(train) * data.eval_fraction))
        held = set(order[:n_eval])
        return [t for i, t in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
    return train, []


@hookimpl
def tune_validate_data(name, settings, ctx):
    if name not in SETTINGS:
        return None
    if ctx.recipe.data.streaming:
        return _validate_streaming(name, settings, ctx)
    train, evals = read_split(name, settings, ctx)
    return f"{len(train)} train rows" + (f", {len(evals)} eval rows" if evals else "")


def _validate_streaming(name, settings, ctx) -> str:
    """Streaming never reads everything up front: check the files and their first rows only."""
    import itertools

    from tune.data.files import iter_rows

    files = _files(ctx, ctx.recipe.data.train_files, "train")
    for path in files:
        if path.suffix.lower() != ".jsonl":
            raise TuneError(
                f"streaming reads .jsonl files, not '{path.suffix or path.name}'.",
                where=f"{ctx.recipe.path}: [data] train",
                fix="convert the data to JSON lines, or set streaming = false.",
            )
        for where, row in itertools.islice(iter_rows(path), 100):
            normalize(name, row, settings, where)
    return f"streaming {len(files)} file(s) (first rows checked)"


# -- tokenization ------------------------------------------------------------------------------
def encode_rows(
    name: str, settings: Any, tokenizer: Any, max_len: int, rows: list
) -> tuple[list, dict]:
    """Tokenize normalized rows; returns (examples, counts of truncated and dropped)."""
    from tune.data.examples import target_count
    from tune.data.tokenize import fit, sliding_windows, tokenize_chat, tokenize_pair

    counts = {"truncated": 0, "dropped": 0, "windows": 0}
    out: list[dict[str, list[int]]] = []
    for where, record in rows:
        if name in ("chat", "alpaca"):
            examples = [tokenize_chat(tokenizer, record, settings.train_on_prompt, where)]
        elif name == "prompt_completion":
            examples = [
                tokenize_pair(
                    tokenizer, record[0], record[1], settings.train_on_prompt, settings.add_eos
                )
            ]
        else:
            example = tokenize_pair(tokenizer, "", record, True, settings.add_eos)
            if settings.stride and len(example["input_ids"]) > max_len:
                examples = sliding_windows(example["input_ids"], max_len, settings.stride)
                counts["windows"] += len(examples) - 1
            else:
                examples = [example]
        for example in examples:
            fitted = fit(example, max_len, settings.truncation)
            if fitted is not example:
                counts["dropped" if fitted is None else "truncated"] += 1
            if fitted is not None and target_count(fitted) > 0:
                out.append(fitted)
            elif fitted is not None:
                counts["dropped"] += 1
    return out, counts


_WORKER: dict[str, Any] = {}


def _init_worker(name, settings, tokenizer, max_len) -> None:
    _WORKER.update(name=name, settings=settings, tokenizer=tokenizer, max_len=max_len)


def _encode_chunk(rows: list) -> tuple[list, dict]:
    return encode_rows(rows=rows, **_WORKER)


def encode_parallel(name, settings, tokenizer, max_len, rows, num_proc: int) -> tuple[list, dict]:
    """`num_proc` processes over chunks of rows; the result keeps the input order."""
    if num_proc <= 1 or len(rows) < 2 * num_proc:
        return encode_rows(name, settings, tokenizer, max_len, rows)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = max(1, -(-len(rows) // (num_proc * 4)))
    chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
    out: list = []
    counts = {"truncated": 0, "dropped": 0, "windows": 0}
    with ProcessPoolExecutor(
        num_proc,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(name, settings, tokenizer, max_len),
    ) as pool:
        for examples, part in pool.map(_encode_chunk, chunks):
            out += examples
            for key, value in part.items():
                counts[key] += value
    return out, counts


def _cache_key(name, settings, tokenizer, ctx) -> str:
    from tune.data import cache

    data = ctx.recipe.data
    files = {
        key: [cache.file_digest(p) for p in _files(ctx, texts, key)]
        for key, texts in (("train", data.train_files), ("eval", data.eval_files))
    }
    return cache.make_key(
        {
            "format": name,
            "settings": settings.model_dump(mode="json"),
            "files": files,
            "eval_fraction": data.eval_fraction,
            "seed": ctx.recipe.train.seed if data.eval_fraction else None,
            "max_seq_len": ctx.recipe.model.max_seq_len,
            "tokenizer": cache.tokenizer_digest(tokenizer),
        }
    )


@hookimpl
def tune_format_data(name, settings, tokenizer, ctx):
    if name not in SETTINGS:
        return None
    from tune.data import Examples, cache
    from tune.data.examples import target_count
    from tune.data.templates import use_template

    if name in ("chat", "alpaca"):
        use_template(tokenizer, settings.template, f"{ctx.recipe.path}: [data] template")
    data, max_len = ctx.recipe.data, ctx.recipe.model.max_seq_len
    if data.streaming:
        return _streaming(name, settings, tokenizer, ctx)
    key = _cache_key(name, settings, tokenizer, ctx) if data.cache else None
    cached = cache.load(key) if key else None
    if cached is not None:
        train, evals, stats = cached
        stats["cache"] = "hit"
    else:
        train_rows, eval_rows = read_split(name, settings, ctx)
        train, counts = encode_parallel(
            name, settings, tokenizer, max_len, train_rows, data.num_proc
        )
        evals, eval_counts = encode_parallel(
            name, settings, tokenizer, max_len, eval_rows, data.num_proc
        )
        stats = {"rows": len(train_rows) + len(eval_rows)}
        stats.update({k: counts[k] + eval_counts[k] for k in counts})
        if not train:
            raise TuneError(
                f"no trainable examples left after tokenization ({stats['dropped']} dropped, "
                f"max_seq_len = {max_len}).",
                where=f"{ctx.recipe.path}: [data]",
                fix='raise [model] max_seq_len, set truncation = "truncate", or check that the '
                "examples have target tokens.",
            )
        stats["train_examples"], stats["eval_examples"] = len(train), len(evals)
        stats["train_tokens"] = sum(len(e["input_ids"]) for e in train)
        stats["train_target_tokens"] = sum(target_count(e) for e in train)
        if key:
            cache.store(key, train, evals, stats)
        stats["cache"] = "miss" if key else "off"
    return Examples(
        train=train,
        eval=evals,
        render_prompt=_prompt_renderer(name, settings, tokenizer),
        stats=stats,
    )


def _streaming(name, settings, tokenizer, ctx):
    """Examples whose train part is a lazy stream; eval (a separate file) is read as usual."""
    from tune.data import Examples
    from tune.data.stream import RowStream

    files = _files(ctx, ctx.recipe.data.train_files, "train")
    max_len = ctx.recipe.model.max_seq_len

    def encode(where: str, row: dict) -> tuple[list, dict]:
        return encode_rows(
            name, settings, tokenizer, max_len, [(where, normalize(name, row, settings, where))]
        )

    evals: list = []
    if ctx.recipe.data.eval_files:
        from tune.data.files import read_rows

        rows = read_rows(_files(ctx, ctx.recipe.data.eval_files, "eval"))
        evals, _ = encode_rows(
            name,
            settings,
            tokenizer,
            max_len,
            [(w, normalize(name, r, settings, w)) for w, r in rows],
        )
    return Examples(
        train=[],
        eval=evals,
        render_prompt=_prompt_renderer(name, settings, tokenizer),
        stats={"streaming": True, "eval_examples": len(evals), "cache": "off"},
        stream=RowStream(files=files, encode=encode),
    )


def _prompt_renderer(name: str, settings: Any, tokenizer: Any):
    def render(prompt: str) -> str:
        if name in ("chat", "alpaca"):
            messages = []
            if getattr(settings, "system_prompt", None):
                messages.append({"role": "system", "content": settings.system_prompt})
            messages.append({"role": "user", "content": prompt})
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return (tokenizer.bos_token or "") + prompt

    return render
