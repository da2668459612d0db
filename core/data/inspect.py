"""`tune data preview` and `tune data stats`: the data exactly as the model will see it."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from tune.contract.context import RunContext
from tune.data.batching import Batcher
from tune.data.examples import IGNORE, target_count


def tokenized(recipe, pm) -> tuple[Any, Any]:
    """(tokenizer, Examples) through the recipe's own loader and format plugins."""
    from tune.data.pipeline import load_examples
    from tune.train.setup import load_tokenizer

    ctx = RunContext(recipe=recipe, output_dir=recipe.path.parent)
    tokenizer = load_tokenizer(pm, recipe, ctx)
    return tokenizer, load_examples(pm, tokenizer, ctx)


RUN = 4  # this many equal masked special tokens in a row are shown once, with their count


def render_example(example: dict[str, list[int]], tokenizer: Any) -> Text:
    """Trained tokens in green, context (masked) tokens dim; special tokens shown as written.
    A long run of one masked special token (an image's placeholder tokens) is shown once with
    its count: `<|image_pad|>x256`."""
    text = Text()
    ids, labels = example["input_ids"], example["labels"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    i = 0
    while i < len(ids):
        token, label = ids[i], labels[i]
        piece = tokenizer.decode([token], skip_special_tokens=False)
        j = i + 1
        if label == IGNORE and token in special:
            while j < len(ids) and ids[j] == token and labels[j] == IGNORE:
                j += 1
        if j - i >= RUN:
            text.append(f"{piece}x{j - i}", style="dim")
            i = j
            continue
        text.append(piece, style="bold green" if label != IGNORE else "dim")
        i += 1
    return text


def preview(recipe, pm, n: int, console: Console) -> None:
    """The first `n` examples of the training data, read and tokenized alone: a million-row file
    is not tokenized to show two examples."""
    from tune.data.pipeline import encode_records, entries, open_format, open_source
    from tune.train.setup import load_tokenizer

    ctx = RunContext(recipe=recipe, output_dir=recipe.path.parent)
    tokenizer = load_tokenizer(pm, recipe, ctx)
    entry = entries(ctx)[0]
    fmt, source = open_format(pm, entry, tokenizer, ctx), open_source(pm, entry, ctx)
    shown = []
    for where, row in source.rows(entry.train, entry.where(ctx, "train")):
        examples, _ = encode_records(fmt, [(where, fmt.check(row, where))])
        shown += examples
        if len(shown) >= n:
            break
    from rich.markup import escape

    console.print(
        "[bold green]trained[/bold green] tokens, [dim]masked[/dim] tokens; the first "
        f"{min(n, len(shown))} train examples of {escape(entry.label)} "
        f"({escape(', '.join(entry.train))}), read and tokenized alone"
    )
    for i, example in enumerate(shown[:n]):
        console.rule(
            f"example {i + 1}: {len(example['input_ids'])} tokens, {target_count(example)} trained"
        )
        console.print(render_example(example, tokenizer))


def histogram(lengths: list[int], max_len: int) -> list[tuple[str, int]]:
    edges = [2**k for k in range(4, int(math.log2(max(max_len, 16))) + 1)]
    if edges[-1] < max_len:
        edges.append(max_len)
    rows, low = [], 0
    for edge in edges:
        rows.append((f"{low + 1}-{edge}", sum(1 for n in lengths if low < n <= edge)))
        low = edge
    return rows


def stats(recipe, pm, console: Console) -> dict[str, Any]:
    _, examples = tokenized(recipe, pm)
    lengths = [len(e["input_ids"]) for e in examples.train]
    train, data = recipe.train, recipe.data
    common = {
        "lengths": lengths,
        "micro_batch_size": train.micro_batch_size,
        "max_seq_len": recipe.model.max_seq_len,
        "seed": train.seed,
        "shuffle": data.shuffle,
    }
    modes = {
        "padded": Batcher(**common),
        "padded, grouped by length": Batcher(**common, group_by_length=True),
        "packed": Batcher(**common, pack=True),
    }
    current = (
        "packed" if data.pack else "padded, grouped by length" if data.group_by_length else "padded"
    )
    table = Table("LENGTH (tokens)", "EXAMPLES", "", box=None, title="lengths")
    biggest = max((count for _, count in histogram(lengths, recipe.model.max_seq_len)), default=1)
    for label, count in histogram(lengths, recipe.model.max_seq_len):
        table.add_row(label, str(count), "#" * round(40 * count / max(biggest, 1)))
    console.print(table)
    summary = Table(
        "BATCHING", "EFFICIENCY", "MICRO-BATCHES/EPOCH", "STEPS/EPOCH", box=None, title="batching"
    )
    result: dict[str, Any] = {"examples": len(lengths), "tokens": sum(lengths), **examples.stats}
    for name, batcher in modes.items():
        micro = len(batcher.epoch(0))
        steps = math.ceil(micro / train.grad_accum)
        eff = batcher.efficiency(0)
        mark = " (this recipe)" if name == current else ""
        summary.add_row(name + mark, f"{100 * eff:.1f}%", str(micro), str(steps))
        result[name] = {"efficiency": eff, "micro_batches": micro, "steps_per_epoch": steps}
    console.print(summary)
    s = examples.stats
    console.print(
        f"{len(lengths)} train examples, {sum(lengths):,} tokens (mean {sum(lengths) / max(len(lengths), 1):.0f}, "
        f"max {max(lengths, default=0)}); {s.get('truncated', 0)} truncated, {s.get('dropped', 0)} dropped"
        + (f", {s['windows']} extra windows" if s.get("windows") else "")
        + f"; estimated steps: {result[current]['steps_per_epoch'] * train.epochs if train.max_steps <= 0 else train.max_steps}"
    )
    return result
