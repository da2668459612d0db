"""From the recipe's data entries to tokenized examples: what every format and source gets free.

An entry is `[data]` or one `[[data.mix]]` table: a source (where rows come from) and a format
(rows to examples). For each, the core checks rows, splits off the eval rows, looks up the
tokenization cache, tokenizes (in `num_proc` processes) and counts; with streaming it wires the
source and format into a lazy reader instead. Training examples of all entries are
concatenated, and the batcher's shuffle mixes them; eval comes from `[data]` only.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tune.contract.context import RunContext
from tune.data.examples import Examples, target_count
from tune.errors import TuneError
from tune.recipe import Selected

VALIDATE_STREAM_ROWS = 100  # streaming validation checks only the first rows


@dataclass
class Entry:
    """One data entry: its recipe table, format, source and specs."""

    label: str  # "[data]" or "[[data.mix]] #1"
    format: Selected
    source: Selected
    train: list[str]
    eval: list[str]

    def where(self, ctx: RunContext, key: str) -> str:
        return f"{ctx.recipe.path}: {self.label} {key}"


def entries(ctx: RunContext) -> list[Entry]:
    recipe = ctx.recipe
    data, b = recipe.data, recipe.backends
    found = [Entry("[data]", b["data_format"], b["data_source"], data.train_files, data.eval_files)]
    for i, (mix, fmt, src) in enumerate(
        zip(data.mix, b["data_mix"], b["data_mix_source"], strict=True)
    ):
        found.append(Entry(f"[[data.mix]] #{i + 1}", fmt, src, mix.train_files, []))
    return found


def open_format(pm: Any, entry: Entry, tokenizer: Any, ctx: RunContext) -> Any:
    return pm.call("tune_format_data", entry.format, tokenizer=tokenizer, ctx=ctx)


def open_source(pm: Any, entry: Entry, ctx: RunContext) -> Any:
    return pm.build(entry.source, ctx)


# -- validation (no tokenizer, no torch) ----------------------------------------------------------
def validate_data(pm: Any, ctx: RunContext) -> str:
    """Every entry's rows checked by its format; a one-line summary per entry, joined."""
    lines = []
    for entry in entries(ctx):
        fmt, source = open_format(pm, entry, None, ctx), open_source(pm, entry, ctx)
        where = entry.where(ctx, "train")
        described = source.check(entry.train, where)
        if entry.eval:
            source.check(entry.eval, entry.where(ctx, "eval"))
        remote = source.downloads(entry.train, where)
        remote_eval = source.downloads(entry.eval, entry.where(ctx, "eval"))
        if remote or remote_eval:  # validation stays offline: rows are checked when read
            line = f"rows not checked offline; {described}"
            line += f"; eval: {'; '.join(remote_eval)}" if remote_eval else ""
        elif ctx.recipe.data.streaming:
            first = source.stream(entry.train, where, None)
            for _, row_where, row in itertools.islice(first, VALIDATE_STREAM_ROWS):
                fmt.check(row, row_where)
            line = f"streaming {described} (first rows checked)"
        else:
            n_train, n_eval, notes = _split_sizes(fmt, source, entry, ctx)
            line = f"{n_train} train rows" + (f", {n_eval} eval rows" if n_eval else "") + notes
        lines.append((entry.format.backend.name, line))
    if len(lines) == 1:
        return lines[0][1]
    return "; ".join(f"{name}: {line}" for name, line in lines)


def _split_sizes(fmt, source, entry: Entry, ctx: RunContext) -> tuple[int, int, str]:
    counts: Counter[str] = Counter()
    train, evals = read_split(fmt, source, entry, ctx, counts)
    empty = sum(1 for _, record in train + evals if isinstance(record, dict) and "drop" in record)
    notes = []
    if counts["oversized"]:
        verb = "cut" if fmt.cuts_long_rows else "dropped"
        notes.append(f"{counts['oversized']} far longer than max_seq_len ({verb})")
    if empty:
        notes.append(f"{empty} with an empty assistant reply (dropped)")
    return len(train), len(evals), "".join(f", {n}" for n in notes)


# -- reading and splitting ------------------------------------------------------------------------
def read_checked(
    fmt, source, specs: list[str], where: str, counts: Counter | None = None
) -> list[tuple[str, Any]]:
    """Checked (where, record) pairs. A row holding far more text than max_seq_len could train
    (`row_bound`) is dropped before tokenization, or cut by a format that cuts (text), and
    counted in `counts` ("oversized")."""
    from tune.contract.format import row_bound, row_chars

    bound = row_bound(fmt.max_seq_len)
    rows = []
    oversized = 0
    for w, row in source.rows(specs, where):
        if row_chars(row, bound) > bound:
            oversized += 1
            if counts is not None:
                counts["oversized"] += 1
            if not fmt.cuts_long_rows:
                continue
        rows.append((w, fmt.check(row, w)))
    if not rows and oversized:
        raise TuneError(
            f"every row ({oversized}) holds far more text than max_seq_len = {fmt.max_seq_len} "
            f"tokens can train (over {bound:,} characters), so all were dropped.",
            where=where,
            fix='split the documents into smaller rows, use format = "text" (which cuts long '
            "rows into windows with stride), or raise [model] max_seq_len.",
        )
    if not rows:
        raise TuneError(
            "no rows found.",
            where=where,
            fix="the data is empty; point it at data with examples.",
        )
    return rows


def read_split(
    fmt, source, entry: Entry, ctx: RunContext, counts: Counter | None = None
) -> tuple[list, list]:
    """Checked (where, record) lists for train and eval: an eval spec, or a seeded fraction."""
    data = ctx.recipe.data
    train = read_checked(fmt, source, entry.train, entry.where(ctx, "train"), counts)
    if entry.eval:
        return train, read_checked(fmt, source, entry.eval, entry.where(ctx, "eval"), counts)
    if data.eval_fraction and entry.label == "[data]":
        order = list(range(len(train)))
        random.Random(ctx.recipe.train.seed).shuffle(order)
        held = set(order[: max(1, round(len(train) * data.eval_fraction))])
        return [t for i, t in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
    return train, []


# -- tokenization ---------------------------------------------------------------------------------
def encode_records(fmt, records: list) -> tuple[list, dict[str, int]]:
    """Encode checked records in order; returns (examples, counts the format noted)."""
    fmt.counts = Counter()
    out: list = []
    for where, record in records:
        out += fmt.encode(record, where)
    return out, dict(fmt.counts)


_WORKER: dict[str, Any] = {}


def _init_worker(fmt) -> None:
    _WORKER["format"] = fmt


def _encode_chunk(records: list) -> tuple[list, dict[str, int]]:
    return encode_records(_WORKER["format"], records)


def encode_parallel(fmt, records: list, num_proc: int) -> tuple[list, dict[str, int]]:
    """`num_proc` processes over chunks of records; the result keeps the input order."""
    if num_proc <= 1 or len(records) < 2 * num_proc:
        return encode_records(fmt, records)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = max(1, -(-len(records) // (num_proc * 4)))
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    out: list = []
    counts: Counter[str] = Counter()
    with ProcessPoolExecutor(
        num_proc,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(fmt,),
    ) as pool:
        for examples, part in pool.map(_encode_chunk, chunks):
            out += examples
            counts.update(part)
    return out, dict(counts)


def _cache_key(fmt, source, entry: Entry, tokenizer, ctx: RunContext) -> str:
    from tune.data import cache

    data = ctx.recipe.data
    split = bool(data.eval_fraction and entry.label == "[data]" and not entry.eval)
    return cache.make_key(
        {
            "format": entry.format.backend.name,
            "format_key": fmt.cache_key(),
            "source": entry.source.backend.name,
            "source_settings": entry.source.settings.model_dump(mode="json"),
            "train": source.fingerprint(entry.train, entry.where(ctx, "train")),
            "eval": source.fingerprint(entry.eval, entry.where(ctx, "eval")) if entry.eval else "",
            "eval_fraction": data.eval_fraction if split else 0.0,
            "seed": ctx.recipe.train.seed if split else None,
            "max_seq_len": ctx.recipe.model.max_seq_len,
            "tokenizer": cache.tokenizer_digest(tokenizer),
        }
    )


def tokenize_entry(pm: Any, entry: Entry, tokenizer: Any, ctx: RunContext) -> Examples:
    """One entry's examples, from the cache when nothing that decides them changed."""
    from tune.data import cache

    fmt, source = open_format(pm, entry, tokenizer, ctx), open_source(pm, entry, ctx)
    data = ctx.recipe.data
    if data.streaming:
        return _streaming(fmt, source, entry, ctx)
    key = _cache_key(fmt, source, entry, tokenizer, ctx) if data.cache else None
    cached = cache.load(key) if key else None
    if cached is not None:
        train, evals, stats = cached
        stats["cache"] = "hit"
        train, evals = drop_short(entry, train, evals, stats, ctx)
        return Examples(
            train=train,
            eval=evals,
            render_prompt=fmt.render_prompt,
            stats=count_tokens(train, stats),
        )
    read_counts: Counter[str] = Counter()
    train_rows, eval_rows = read_split(fmt, source, entry, ctx, read_counts)
    train, counts = encode_parallel(fmt, train_rows, data.num_proc)
    evals, eval_counts = encode_parallel(fmt, eval_rows, data.num_proc)
    stats: dict[str, Any] = {"rows": len(train_rows) + len(eval_rows)}
    stats.update({"truncated": 0, "dropped": 0, "windows": 0})
    stats.update(Counter(counts) + Counter(eval_counts) + read_counts)
    if not train:
        raise TuneError(
            f"no trainable examples left after tokenization ({stats['dropped']} dropped, "
            f"max_seq_len = {ctx.recipe.model.max_seq_len}).",
            where=f"{ctx.recipe.path}: {entry.label}",
            fix='raise [model] max_seq_len, set truncation = "truncate", or check that the '
            "examples have target tokens.",
        )
    if key:
        cache.store(key, train, evals, dict(stats))
    train, evals = drop_short(entry, train, evals, stats, ctx)
    stats["cache"] = "miss" if key else "off"
    return Examples(
        train=train, eval=evals, render_prompt=fmt.render_prompt, stats=count_tokens(train, stats)
    )


def count_tokens(train: list, stats: dict[str, Any]) -> dict[str, Any]:
    """Add the training tokens (all, and those scored) to `stats`."""
    if train and "input_ids" in train[0]:
        stats["train_tokens"] = sum(len(e["input_ids"]) for e in train)
    if train and "labels" in train[0]:
        stats["train_target_tokens"] = sum(target_count(e) for e in train)
    return stats


def min_tokens(entry: Entry, ctx: RunContext) -> int:
    """The entry's `min_tokens` (0 = keep every example)."""
    data = ctx.recipe.data
    table = data if entry.label == "[data]" else data.mix[int(entry.label.rsplit("#", 1)[1]) - 1]
    return table.min_tokens


def drop_short(
    entry: Entry, train: list, evals: list, stats: dict[str, Any], ctx: RunContext
) -> tuple[list, list]:
    """Examples of at least `min_tokens` tokens; the rest are counted as `short`. Applied after
    the cache, so changing the bound does not tokenize again."""
    bound = min_tokens(entry, ctx)
    if bound and train and "input_ids" in train[0]:
        kept = [e for e in train if len(e["input_ids"]) >= bound]
        kept_eval = [e for e in evals if len(e["input_ids"]) >= bound]
        stats["short"] = len(train) - len(kept) + len(evals) - len(kept_eval)
        train, evals = kept, kept_eval
        if not train:
            raise TuneError(
                f"no training example has at least min_tokens = {bound} tokens "
                f"({stats['short']} shorter).",
                where=f"{ctx.recipe.path}: {entry.label} min_tokens",
                fix="lower min_tokens, or use longer documents (and a max_seq_len that keeps them "
                "whole).",
            )
    stats["train_examples"], stats["eval_examples"] = len(train), len(evals)
    return train, evals


def _streaming(fmt, source, entry: Entry, ctx: RunContext) -> Examples:
    """Examples whose train part is a lazy stream; eval (separate specs) is read as usual."""
    from tune.data.stream import RowStream

    where = entry.where(ctx, "train")

    from tune.contract.format import row_bound, row_chars

    bound = row_bound(fmt.max_seq_len)
    shortest = min_tokens(entry, ctx)

    def encode(row_where: str, row: dict) -> tuple[list, dict[str, int]]:
        oversized = row_chars(row, bound) > bound
        if oversized and not fmt.cuts_long_rows:
            return [], {"oversized": 1}
        examples, counts = encode_records(fmt, [(row_where, fmt.check(row, row_where))])
        if shortest:
            kept = [e for e in examples if len(e.get("input_ids", ())) >= shortest]
            counts["short"] = counts.get("short", 0) + len(examples) - len(kept)
            examples = kept
        return examples, {**counts, "oversized": int(oversized)}

    evals: list = []
    if entry.eval:
        rows = read_checked(fmt, source, entry.eval, entry.where(ctx, "eval"))
        evals, _ = encode_records(fmt, rows)
    return Examples(
        train=[],
        eval=evals,
        render_prompt=fmt.render_prompt,
        stats={"streaming": True, "eval_examples": len(evals), "cache": "off"},
        stream=RowStream(
            rows=lambda start: source.stream(entry.train, where, start),
            encode=encode,
            where=where,
        ),
    )


def load_examples(pm: Any, tokenizer: Any, ctx: RunContext) -> Examples:
    """Tokenized examples of every entry, mixed as the entries' weight/epochs say; stats add
    up, and `sources` gives the examples of each entry in the training set."""
    from tune.data.mix import mix

    parts = [tokenize_entry(pm, entry, tokenizer, ctx) for entry in entries(ctx)]
    if len(parts) == 1 and (parts[0].stream is not None or ctx.recipe.data.epochs is None):
        return parts[0]
    main = parts[0]
    stats: dict[str, Any] = dict(main.stats)
    for part in parts[1:]:
        for key, value in part.stats.items():
            if isinstance(value, int) and isinstance(stats.get(key), int):
                stats[key] += value
    caches = {part.stats.get("cache", "off") for part in parts}
    stats["cache"] = caches.pop() if len(caches) == 1 else "partial"
    data = ctx.recipe.data
    settings = [data] + list(data.mix)
    train, counts = mix(
        [part.train for part in parts],
        weights=[s.weight for s in settings],
        epochs=[s.epochs for s in settings],
        seed=ctx.recipe.train.seed,
    )
    stats["sources"] = counts
    stats["source_examples"] = [len(part.train) for part in parts]
    stats["train_examples"] = len(train)
    return dataclasses.replace(main, train=train, stats=count_tokens(train, stats))
