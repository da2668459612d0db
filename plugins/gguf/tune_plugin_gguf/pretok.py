"""Which of llama.cpp's pre-tokenizers a byte-level BPE tokenizer is: `tokenizer.ggml.pre`.

llama.cpp does not run tokenizer.json: it splits text before BPE with regexes it keeps per
pre-tokenizer *name*, and the GGUF names one. A wrong name ("default" for SmolLM2) splits
"it's   spaced" otherwise than the model was trained on, so every contraction a user types
reaches the model as token sequences it never saw.

Two ways to tell, tried in order:

1. The tokenizer itself, as llama.cpp's converter recognises it: the ids it gives a fixed
   reference text, hashed, looked up among tokenizers llama.cpp has a name for. Exact, for the
   released tokenizers a fine-tune keeps (SmolLM, Llama 3, Qwen2, Mistral Nemo, ...).
2. What its pre-tokenizer does: the pieces tokenizer.json's pre-tokenizer cuts a probe text
   into, compared with the pieces each named llama.cpp regex set cuts it into. This covers a
   tokenizer trained anew with a known pre-tokenizer (and is said, as it is a weaker proof).

A vocabulary without merges (every token one character: tune's tiny tokenizer) tokenizes the
same under every split; it is written as "default" with a note. Anything else is refused
unless `-x pre=NAME` says which name to write: never "default" in silence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tune.plugin import TuneError

# The reference text of llama.cpp's convert_hf_to_gguf.py (its hashes are of the ids of this
# exact string: spaces, tabs and newlines in runs, emoji sequences, digit runs, Khmer, CJK,
# Cyrillic, quote and punctuation runs, and contractions in mixed case).
HASH_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d"
    "\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 "
    "33333 333333 3333333 33333333 3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796"
    "\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c"
    "1314151\u5929\uff5e ------======= \u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b"
    "\u0433\u0430\u0440\u0441\u043a\u0438 ''''''```````\"\"\"\"......!!!!!!?????? I've been "
    "'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256 of str(tokenizer.encode(HASH_TEXT)) -> (llama.cpp's name, a tokenizer that has it).
# Values as llama.cpp's converter lists them (checked here on the vocabularies llama.cpp ships
# for gpt-2, qwen2 and starcoder: see tests/test_gguf.py and README.md).
KNOWN_HASHES: dict[str, tuple[str, str]] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": ("llama-bpe", "Llama 3"),
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": (
        "smaug-bpe",
        "Llama 3 without its BOS",
    ),
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": ("llama4", "Llama 4"),
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": (
        "smollm",
        "SmolLM / SmolLM2",
    ),
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": ("qwen2", "Qwen1.5-3"),
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": (
        "qwen2",
        "Qwen3 embedding",
    ),
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": (
        "deepseek-r1-qwen",
        "DeepSeek-R1-Distill-Qwen",
    ),
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": ("qwen35", "Qwen3.5"),
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": (
        "tekken",
        "Mistral Nemo",
    ),
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": ("pixtral", "Pixtral"),
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": ("gpt-2", "GPT-2"),
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": (
        "starcoder",
        "StarCoder2",
    ),
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": ("falcon3", "Falcon3"),
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": ("phi-2", "Phi-2"),
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": ("gpt-4o", "GPT-4o"),
}

_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
# llama.cpp's regex sets (applied one after another, each cutting the pieces of the one before),
# in the order they are tried: a name here is one llama.cpp 0.3.x (llama-cpp-python) knows.
SPLITS: dict[str, list[str]] = {
    "llama-bpe": [
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    "qwen2": [
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    "smollm": [r"\p{N}", _GPT2],
    "gpt-2": [_GPT2],
    "tekken": [
        rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    "gpt-4o": [
        rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?"
        rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
}
# What the split comparison reads besides HASH_TEXT: what tells the sets above apart.
PROBE_TEXT = (
    HASH_TEXT + " it's   spaced\n\n  Hello World's 12345 x1y22z 3.14159\tTAB\r\nCRLF "
    "CamelCaseWord HTTPServer naïve café 2026-12-07 (a) [b] {c} #tag @user ~!$%^&*+=|\\/<>?"
    " end  "
)


@dataclass
class Pre:
    """The name to write, how it was found, and what to tell the user (None: nothing)."""

    name: str
    how: str  # "hash", "splits", "no merges", "sentencepiece", "given"
    note: str | None = None


def identify(tokenizer: Any, data: dict[str, Any], given: str | None = None) -> Pre:
    """llama.cpp's pre-tokenizer name for `tokenizer` (tokenizer.json parsed as `data`)."""
    model = data.get("model", {})
    if model.get("byte_fallback"):
        return Pre("default", "sentencepiece")  # llama.cpp ignores the name for these
    if given:
        return Pre(given, "given", f"tokenizer.ggml.pre = '{given}' as given (-x pre).")
    ids = tokenizer.encode(HASH_TEXT)
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    if digest in KNOWN_HASHES:
        return Pre(KNOWN_HASHES[digest][0], "hash")
    matched = by_splits(tokenizer, data)
    if matched:
        return Pre(
            matched,
            "splits",
            f"tokenizer.ggml.pre = '{matched}': not a tokenizer llama.cpp lists (hash "
            f"{digest[:12]}), but its pre-tokenizer cuts text exactly as llama.cpp's "
            f"'{matched}' does. `tune verify` checks llama.cpp's ids against it.",
        )
    if not model.get("merges"):
        return Pre(
            "default",
            "no merges",
            "tokenizer.ggml.pre = 'default': the tokenizer's pre-tokenizer is none llama.cpp "
            "knows, but its vocabulary has no merges (one token per character), so every "
            "pre-tokenizer gives the same ids.",
        )
    raise TuneError(
        "the tokenizer's pre-tokenizer (how text is cut before BPE) is none llama.cpp knows: "
        f"not a tokenizer it lists (hash {digest[:12]}), and its split rules match none of "
        f"{', '.join(SPLITS)}. Writing 'default' would make llama.cpp and Ollama tokenize "
        "user text otherwise than in training.",
        where="tokenizer.json: pre_tokenizer",
        fix="if you know the llama.cpp name of this pre-tokenizer, pass it: -x pre=NAME; then "
        "check the file with `tune verify FILE --against RUN` (it compares llama.cpp's ids).",
    )


def by_splits(tokenizer: Any, data: dict[str, Any]) -> str | None:
    """The first name in SPLITS whose regexes cut PROBE_TEXT into the tokenizer's pieces."""
    pieces = hf_pieces(tokenizer, data, PROBE_TEXT)
    if pieces is None:
        return None
    for name, regexes in SPLITS.items():
        if split(PROBE_TEXT, regexes) == pieces:
            return name
    return None


def hf_pieces(tokenizer: Any, data: dict[str, Any], text: str) -> list[str] | None:
    """The pieces tokenizer.json's normalizer + pre-tokenizer cut `text` into (None: it adds a
    prefix space or rewrites the text, which llama.cpp's byte-level BPE never does)."""
    if _adds_prefix(data.get("pre_tokenizer")):
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return None
    if backend.normalizer is not None and backend.normalizer.normalize_str(text) != text:
        return None
    cut = backend.pre_tokenizer.pre_tokenize_str(text)
    pieces = [text[start:end] for _, (start, end) in cut]
    return pieces if "".join(pieces) == text else None


def _adds_prefix(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("add_prefix_space") or node.get("prepend_scheme") in ("always", "first"):
            return True
        return any(_adds_prefix(v) for v in node.values())
    if isinstance(node, list):
        return any(_adds_prefix(v) for v in node)
    return False


def split(text: str, regexes: list[str]) -> list[str]:
    """`text` cut as llama.cpp cuts it: each regex in turn splits every piece into its matches
    and the text between them."""
    import regex

    pieces = [text]
    for pattern in regexes:
        compiled = regex.compile(pattern)
        out: list[str] = []
        for piece in pieces:
            at = 0
            for match in compiled.finditer(piece):
                if match.start() > at:
                    out.append(piece[at : match.start()])
                if match.end() > match.start():
                    out.append(match.group())
                at = match.end()
            if at < len(piece):
                out.append(piece[at:])
        pieces = out
    return pieces


def read_tokenizer_json(path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
