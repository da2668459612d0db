"""The tokenizer of a model folder as GGUF metadata: what llama.cpp (and transformers) rebuild.

A GGUF carries no tokenizer.json: the vocabulary, merges, token types, special ids and the chat
template are metadata under llama.cpp's keys. Two families cover Llama, Mistral and Qwen2:
byte-level BPE (`gpt2`: Llama 3, Qwen2, tune's tiny models) and SentencePiece-style BPE with byte
fallback (`llama`: Llama 2, Mistral v0.x). Read from tokenizer.json, the same file transformers
uses, so the exported tokenizer is the trained one, special tokens and template included.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.plugin import TuneError

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# gguf.TokenType values (kept here so building the plan needs no import of gguf)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    """Everything `tokenizer.*` in a GGUF holds."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str]
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    stops: list[str] = field(default_factory=list)  # texts generation stops at
    pre_note: str | None = None  # how `pre` was found, when the user should know


def read_vocab(model_dir: Path, vocab_size: int, pre: str | None = None) -> Vocab:
    """Vocabulary of `model_dir` (tokenizer.json + tokenizer_config), padded to `vocab_size`;
    `pre` forces llama.cpp's pre-tokenizer name (else identified: pretok.py)."""
    from transformers import AutoTokenizer

    from tune_plugin_gguf.pretok import identify

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise TuneError(
            "the model folder has no tokenizer.json (a fast tokenizer), which GGUF export reads.",
            where=str(model_dir),
            fix="save the tokenizer with transformers (tokenizer.save_pretrained) beside the model.",
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    bpe = data.get("model", {})
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if bpe.get("type") != "BPE":
        raise TuneError(
            f"the tokenizer is a {bpe.get('type')} model; GGUF export supports BPE tokenizers "
            "(byte-level as in Llama 3 and Qwen2, or SentencePiece-style as in Llama 2 and Mistral).",
            where=str(path),
        )
    spm = bool(bpe.get("byte_fallback"))
    by_id: dict[int, str] = {i: t for t, i in bpe["vocab"].items()}
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    for i, entry in added.items():
        by_id[i] = entry["content"]
    size = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(text)
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif spm and _BYTE_TOKEN.fullmatch(text):
            tokens.append(text)
            types.append(BYTE)
        else:
            tokens.append(text)
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
    special = {k: i for k, i in _special_ids(tokenizer).items() if 0 <= i < size}
    if spm and special.get("unk") is not None:
        types[special["unk"]] = UNKNOWN
    probe = tokenizer("a")["input_ids"]
    found = identify(tokenizer, data, pre)
    return Vocab(
        model="llama" if spm else "gpt2",
        pre=found.name,
        pre_note=found.note,
        tokens=tokens,
        types=types,
        # SentencePiece merges by score: a vocabulary in merge order gives -id
        scores=[0.0 if t != NORMAL else -float(i) for i, t in enumerate(types)] if spm else None,
        merges=merges,
        special=special,
        add_bos=bool(probe) and probe[0] == tokenizer.bos_token_id,
        add_eos=bool(probe) and probe[-1] == tokenizer.eos_token_id and len(probe) > 1,
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
        stops=_stops(model_dir, tokenizer),
    )


def _special_ids(tokenizer: Any) -> dict[str, int]:
    out = {}
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(token_id, int):
            out[name] = token_id
    return out


def _stops(model_dir: Path, tokenizer: Any) -> list[str]:
    """Texts generation ends at: the eos, and every eos id generation_config.json lists."""
    ids: list[int] = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens(sorted(set(ids), key=ids.index))))


def add_to_writer(writer: Any, vocab: Vocab) -> None:
    """Write `vocab` as GGUF `tokenizer.*` metadata."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    # Always written (also empty: a vocabulary without merges, like tune's tiny byte tokenizer),
    # so readers do not try to rebuild merges from scores.
    from gguf import GGUFValueType

    writer.add_key_value(
        "tokenizer.ggml.merges", vocab.merges, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING
    )
    for name, token_id in vocab.special.items():
        getattr(writer, f"add_{name}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
