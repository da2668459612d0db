"""A GGUF file checked in llama.cpp itself (llama-cpp-python) against the trained model.

`reference` (tune's verify Reference) is the trained model in transformers with the run's own
prompts and texts. Each check is one line of the table `tune verify` prints:

- tokenizer: llama.cpp's ids for the run's texts (and probes a wrong pre-tokenizer splits
  otherwise: contractions, runs of spaces, digits) equal transformers' ids.
- chat template: the template in the file, rendered as llama-cpp-python renders it (Jinja, the
  model's bos/eos texts) and tokenized by llama.cpp, gives the trained template's tokens with
  the generation prompt; llama.cpp's built-in template engine (llama-cli, llama-server without
  --jinja) is shown beside, as information when it does not know the template.
- end of turn: the token the template closes an assistant turn with ends generation in
  llama.cpp, and llama.cpp's eos is a token the trained model stops at.
- logits: next-token distributions on the prompts: float files within a tight tolerance;
  quantized ones by top-1 agreement and KL(transformers || llama.cpp), with limits per quant.
  Agreement is counted up to near-ties (llama.cpp's pick within TIE logits of the reference's
  top-1 in the reference's own logits): a random-init or barely trained model's flat
  distributions flip between near-equal tokens under any rounding; the raw rate is shown too.
- greedy: the 32-token greedy continuation of each prompt equals transformers' for float and
  q8_0 files; k-quants show the agreeing prefix as information.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# llama.cpp file types (general.file_type) by name
FILE_TYPES = {0: "f32", 1: "f16", 7: "q8_0", 32: "bf16", 2: "q4_0", 3: "q4_1", 8: "q5_0"}
FILE_TYPES |= {9: "q5_1", 10: "q2_k", 11: "q3_k_s", 12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s"}
FILE_TYPES |= {15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k", 25: "iq4_nl", 30: "iq4_xs"}
# per quant: (min top-1 agreement, max mean KL in nats, max |logit difference| or None);
# measured on tune's tiny models and a SmolLM2-135M-shaped one (bench_verify.md), with margin
LIMITS: dict[str, tuple[float, float, float | None]] = {
    "f32": (1.0, 1e-6, 2e-3),
    "f16": (0.99, 1e-4, 0.1),
    "bf16": (0.98, 1e-3, 0.25),
    "q8_0": (0.98, 1e-3, 0.5),
    "q6_k": (0.95, 0.01, None),
    "q5_k_m": (0.92, 0.02, None),
    "q5_k_s": (0.92, 0.02, None),
    "q4_k_m": (0.85, 0.05, None),
    "q4_k_s": (0.85, 0.06, None),
}
LOOSE = (0.7, 0.2, None)  # 2- and 3-bit quants, legacy q4_0 ...
TIE = 0.05  # logits: a pick the reference rates this close to its top-1 is a near-tie
EXACT_GREEDY = ("f32", "f16", "bf16", "q8_0")  # greedy must equal transformers'


def reads(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def open_model(path: Path, n_ctx: int = 1024) -> Any:
    import os

    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=max(1, (os.cpu_count() or 2)),
    )


def verify_gguf(path: Path, reference: Any) -> list[tuple[str, bool | None, str]]:
    """The checks of one GGUF file (the module docstring says which)."""
    from tune_plugin_gguf.quantize import EXTRA, available

    if not available():
        from tune.plugin import TuneError

        raise TuneError(
            "verifying a GGUF file loads it in llama.cpp, through llama-cpp-python, which is "
            "not installed here.",
            where=str(path),
            fix=f"pip install '{EXTRA}' (builds llama.cpp from source, several minutes on CPU).",
        )
    longest = max([len(p) for p in reference.prompts] + [64]) + reference.new_tokens + 8
    llm = open_model(path, n_ctx=max(512, longest))
    quant = FILE_TYPES.get(int(llm.metadata.get("general.file_type", -1)), "other")
    checks = [
        ("file", None, f"{quant}, tokenizer.ggml.pre = {_pre(path)}"),
        _tokenizer(llm, reference),
        *_template(llm, reference),
        _turn_end(llm, reference),
        _logits(llm, reference, quant),
        _greedy(llm, reference, quant),
    ]
    llm.close() if hasattr(llm, "close") else None
    return checks


def _pre(path: Path) -> str:
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("tokenizer.ggml.pre")
    return bytes(field.parts[field.data[0]]).decode() if field else "(none)"


def _tokenizer(llm: Any, reference: Any) -> tuple[str, bool, str]:
    bad = []
    for text in reference.texts:
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        want = reference.encode(text)
        if list(got) != list(want):
            bad.append((text, want, got))
    n = len(reference.texts)
    if not bad:
        return ("tokenizer", True, f"{n} of {n} texts: llama.cpp ids = transformers ids")
    text, want, got = bad[0]
    return (
        "tokenizer",
        False,
        f"{len(bad)} of {n} texts tokenized differently, e.g. {text[:40]!r}: transformers "
        f"{want[:12]} vs llama.cpp {list(got)[:12]}",
    )


def _template(llm: Any, reference: Any) -> list[tuple[str, bool | None, str]]:
    if not reference.conversations:
        return [("chat template", None, "the model has no chat template")]
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return [("chat template", False, "the file holds no chat template (the model has one)")]
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = llm._model
    eos, bos = vocab.token_eos(), vocab.token_bos()
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=vocab.token_get_text(eos) if eos != -1 else "",
        bos_token=vocab.token_get_text(bos) if bos != -1 else "",
    )
    out = []
    bad = None
    for messages in reference.conversations:
        prompt = formatter(messages=messages).prompt
        got = list(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
        want = reference.chat_ids(messages)
        if got != want and bad is None:
            bad = (messages, want, got)
    n = len(reference.conversations)
    if bad is None:
        out.append(("chat template", True, f"{n} conversations render the trained tokens"))
    else:
        _, want, got = bad
        where = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
        where = min(len(want), len(got)) if where is None else where
        tail = reference.tokenizer.decode(want[where:][:12])
        out.append(
            (
                "chat template",
                False,
                f"the file's template renders other tokens than the trained one from token "
                f"{where} (trained: {len(want)} tokens, file: {len(got)}; trained goes on with "
                f"{tail!r})",
            )
        )
    out.append(_builtin_template(template, reference))
    return out


def _builtin_template(template: str, reference: Any) -> tuple[str, bool | None, str]:
    """llama.cpp's own (non-Jinja) template engine: what llama-cli / llama-server use without
    --jinja. Information: it knows a fixed set of template families."""
    import ctypes

    import llama_cpp

    messages = reference.conversations[0]
    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, m in enumerate(messages):
        keep += [m["role"].encode(), m["content"].encode()]
        chat[i].role, chat[i].content = keep[-2], keep[-1]
    size = 1 << 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(messages), True, buf, size)
    name = "chat template (built-in)"
    if n < 0:
        return (name, None, "llama.cpp's built-in engine does not know it: use --jinja there")
    text = buf.raw[:n].decode("utf-8", errors="replace")
    same = text == reference.chat_text(messages)
    return (name, None, "renders the same text" if same else "renders other text: use --jinja")


def _turn_end(llm: Any, reference: Any) -> tuple[str, bool, str]:
    import llama_cpp

    vocab = llm._model.vocab
    eos = llama_cpp.llama_vocab_eos(vocab)
    name = "end of turn"
    tok = reference.tokenizer
    if eos not in reference.stop_ids:
        text = tok.convert_ids_to_tokens(eos) if 0 <= eos < len(tok) else str(eos)
        return (name, False, f"llama.cpp's eos is {text!r} ({eos}), not a token the model stops at")
    if reference.turn_end is not None and not llama_cpp.llama_vocab_is_eog(
        vocab, reference.turn_end
    ):
        text = tok.convert_ids_to_tokens(reference.turn_end)
        return (name, False, f"{text!r} ends the trained turns but does not stop llama.cpp")
    ends = tok.convert_ids_to_tokens(reference.turn_end) if reference.turn_end is not None else None
    what = f"{ends!r} ends generation" if ends else "no chat template: eos ends generation"
    return (name, True, f"{what}; eos {tok.convert_ids_to_tokens(eos)!r}")


def _run(llm: Any, ids: list[int]) -> Any:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def logit_stats(reference: Any, llm: Any) -> dict[str, float]:
    """Over every position of every prompt: top-1 agreement (raw, and up to near-ties: where
    the reference rates llama.cpp's pick within TIE logits of its own top-1, as in a random-init
    model's flat distributions), mean KL, max |difference|."""
    import numpy as np

    agree = near = total = 0
    kls, worst = [], 0.0
    for ids in reference.prompts:
        want = reference.logits(ids).astype(np.float64)
        got = _run(llm, ids)
        n = min(want.shape[-1], got.shape[-1])
        want, got = want[:, :n], got[:, :n]
        worst = max(worst, float(np.abs(want - got).max()))
        top, pick = want.argmax(-1), got.argmax(-1)
        rows = np.arange(len(top))
        agree += int((top == pick).sum())
        near += int((want[rows, top] - want[rows, pick] <= TIE).sum())
        total += want.shape[0]
        p = _log_softmax(want)
        q = _log_softmax(got)
        kls.append((np.exp(p) * (p - q)).sum(-1))
    return {
        "top1": near / max(total, 1),
        "top1_raw": agree / max(total, 1),
        "kl": float(np.concatenate(kls).mean()) if kls else 0.0,
        "max_diff": worst,
        "positions": float(total),
    }


def _log_softmax(x: Any) -> Any:
    import numpy as np

    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _logits(llm: Any, reference: Any, quant: str) -> tuple[str, bool, str]:
    stats = logit_stats(reference, llm)
    top1, kl, diff = LIMITS.get(quant, LOOSE)
    ok = stats["top1"] >= top1 and stats["kl"] <= kl and (diff is None or stats["max_diff"] <= diff)
    limit = f"{quant} limits: top-1 up to near-ties >= {top1:.0%}, KL <= {kl:g}" + (
        f", max |diff| <= {diff:g}" if diff is not None else ""
    )
    return (
        "logits",
        ok,
        f"top-1 {stats['top1_raw']:.1%} of {int(stats['positions'])} positions, KL "
        f"{stats['kl']:.2e}, max |diff| {stats['max_diff']:.3g}, top-1 up to near-ties "
        f"{stats['top1']:.1%} ({limit})",
    )


def generate(llm: Any, ids: list[int], n: int) -> list[int]:
    """`n` greedy (argmax) tokens after `ids` in llama.cpp, not stopped at end of generation
    (like the reference's: where generation stops is the end-of-turn check)."""
    _run(llm, ids)
    out: list[int] = []
    for _ in range(n):
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        out.append(token)
        llm.eval([token])
    return out


def _greedy(llm: Any, reference: Any, quant: str) -> tuple[str, bool | None, str]:
    same, prefix, total, first_bad = 0, 0, 0, None
    for ids in reference.prompts:
        want = reference.greedy(ids)
        got = generate(llm, ids, reference.new_tokens)
        total += len(want)
        k = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
        k = min(len(want), len(got)) if k is None else k
        prefix += k
        if want == got:
            same += 1
        elif first_bad is None:
            first_bad = (k, want, got)
    n = len(reference.prompts)
    detail = (
        f"{same} of {n} prompts identical ({prefix} of {total} tokens agree before a difference)"
    )
    if first_bad is not None:
        k, want, got = first_bad
        tok = reference.tokenizer
        detail += f"; first differs at token {k}: {tok.decode(want[k : k + 6])!r} vs {tok.decode(got[k : k + 6])!r}"
    if quant not in EXACT_GREEDY:
        return ("greedy", None, detail)
    return ("greedy", same == n, detail)
