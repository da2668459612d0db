"""`DataFormat`: what a format backend returns from `tune_format_data`. Rows in, examples out.

The core reads the rows (through the data source), splits off eval rows, caches the examples,
tokenizes in parallel and streams; a format only says how one row is checked (`check`, no
tokenizer, no torch: `tune validate` runs it on every row) and how one checked row becomes
examples (`encode`). The object is pickled to tokenization workers, so keep it plain data.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tune.data.examples import IGNORE

Example = dict[str, Any]

# A row holding more text than this many characters per token of max_seq_len is far beyond what
# can be trained: it is cut (text format, truncation = "truncate") or dropped before tokenization,
# so one giant line cannot take the tokenizer's memory. No token fits more characters in practice.
CHARS_PER_TOKEN_BOUND = 32


def row_bound(max_seq_len: int) -> int:
    """Characters of text a row may hold before it is cut or dropped unread by the tokenizer."""
    return max(CHARS_PER_TOKEN_BOUND * max_seq_len, 1 << 16)


def row_chars(value: Any, limit: int) -> int:
    """Characters of text in a row (strings anywhere in it), counted up to just past `limit`."""
    total, todo = 0, [value]
    while todo and total <= limit:
        item = todo.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)
    return total


class DataFormat:
    """Base class of data formats. Subclasses implement `check` and `encode`."""

    # True when conversations are rendered through the tokenizer's chat template: `tune chat`
    # then talks to the trained model through that template, as it was trained.
    chat: bool = False
    # True when `check` itself cuts a row beyond `row_bound` (the text format): the core then
    # passes such rows on instead of dropping them.
    cuts_long_rows: bool = False

    def __init__(self, settings: Any, tokenizer: Any = None, *, max_seq_len: int, where: str):
        self.settings = settings
        self.tokenizer = tokenizer  # None at validation time
        self.max_seq_len = max_seq_len
        self.where = where  # the recipe table, for messages: "recipe.toml: [data]"
        self.counts: Counter[str] = Counter()  # events for the run summary (truncated, ...)

    def check(self, row: dict[str, Any], where: str) -> Any:
        """Validate and normalize one row; raise `TuneError(where=where)` naming what is wrong.

        Runs without a tokenizer and without torch. The return value (any picklable record) is
        what `encode` receives.
        """
        raise NotImplementedError

    def encode(self, record: Any, where: str) -> list[Example]:
        """Tokenize one checked record into zero or more examples (`self.tokenizer` is set).

        Add what happened to `self.counts` ("truncated", "dropped", ...): the core sums the
        counts of all rows (and workers) into the run summary.
        """
        raise NotImplementedError

    def row_limit(self) -> int:
        """Characters a row may hold before the core cuts (`cuts_long_rows`) or drops it unread:
        far beyond what max_seq_len tokens can hold, so one giant line cannot take the
        tokenizer's memory."""
        return row_bound(self.max_seq_len)

    def render_prompt(self, text: str) -> str:
        """How a `[generate]` prompt is shown to the trained model (default: BOS + text)."""
        from tune.model.generation import text_prompt

        return text_prompt(self.tokenizer, text)

    def prompt_inputs(self, messages: list[dict[str, Any]], images: list[str]) -> Any:
        """Model inputs (tensors of a batch of one, for `generate`) of a chat prompt whose first
        user turn shows `images` (file paths): how `tune chat --image` talks to a model trained
        on this format. None (the default): the format reads no images."""
        return None

    def cache_key(self) -> Any:
        """What decides the examples besides the rows, tokenizer and max_seq_len."""
        return self.settings.model_dump(mode="json")

    # -- helpers for "lm" examples ({"input_ids", "labels"}) ------------------------------------
    def fit(self, examples: list[Example], mode: str = "truncate") -> list[Example]:
        """Apply the length policy and drop examples with nothing to train, counting both.

        `mode` "truncate" cuts an example's tail to max_seq_len, "drop" drops the example.
        """
        kept = []
        for example in examples:
            if len(example["input_ids"]) > self.max_seq_len:
                if mode == "drop":
                    self.counts["dropped"] += 1
                    continue
                example = {k: v[: self.max_seq_len] for k, v in example.items()}
                self.counts["truncated"] += 1
            if any(label != IGNORE for label in example["labels"][1:]):
                kept.append(example)
            else:
                self.counts["dropped"] += 1
        return kept
