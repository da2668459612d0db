"""Metrics `rouge`, `exact_match` and `bleu`: greedy generations of the eval prompts, scored.

For each eval example the prompt is its tokens before the first trained token (the chat
template exactly as in training) and the reference is the decoded first trained span. Each rank
generates for its share of the eval set in left-padded batches (all ranks in lockstep when the
run's strategy shards parameters); sums go through `data.collectives.all_reduce_sum`, so every
rank reports the same global figures. ROUGE is rouge-score's F1
(0..1, stemmer on by default), exact match a fraction (0..1), BLEU sacrebleu's corpus BLEU
(0..100) from summed n-gram statistics, so it equals BLEU over the whole set.
Imports nothing heavy at the top: `tune plugins list` imports this module.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from pydantic import Field
from tune.plugin import IGNORE, LM_EXAMPLES, Capabilities, Settings, hookimpl

TUNE_API = ">=2,<3"

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
NEEDS = {"rouge": ("rouge_score",), "exact_match": (), "bleu": ("sacrebleu",)}


class GenerationSettings(Settings):
    """Keys of [eval.rouge], [eval.exact_match] and [eval.bleu]."""

    max_new_tokens: int = Field(64, ge=1, description="tokens generated per eval prompt")
    batch_size: int = Field(16, ge=1, description="prompts per generate call")
    max_examples: int = Field(0, ge=0, description="score at most this many examples; 0 = all")


class RougeSettings(GenerationSettings):
    use_stemmer: bool = Field(True, description="Porter stemmer, as rouge-score's default CLI")


# -- scoring (pure, tested against the libraries called directly) ----------------------------
def rouge_sums(predictions: list[str], references: list[str], use_stemmer: bool = True):
    """Summed F1 of rouge1/2/L/Lsum over the pairs (divide by the count for the mean)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)
    sums = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        for key in ROUGE_KEYS:
            sums[key] += scores[key].fmeasure
    return sums


def bleu_stats(predictions: list[str], references: list[str]) -> list[float]:
    """sacrebleu's sufficient statistics: correct[4] + total[4] + sys_len + ref_len."""
    from sacrebleu.metrics import BLEU

    score = BLEU().corpus_score(predictions, [references])
    return [*map(float, score.counts), *map(float, score.totals), score.sys_len, score.ref_len]


def bleu_from_stats(stats: list[float]) -> float:
    from sacrebleu.metrics import BLEU

    correct, total = [int(x) for x in stats[:4]], [int(x) for x in stats[4:8]]
    return BLEU.compute_bleu(correct, total, int(stats[8]), int(stats[9])).score


# -- generation --------------------------------------------------------------------------------
def prompt_and_reference(example: dict[str, Any]) -> tuple[list[int], list[int]] | None:
    """(prompt ids, reference ids) of an example: before, and the first span of, trained
    tokens; None for an example with nothing trained (the padding rows of a rank's share)."""
    ids, labels = list(example["input_ids"]), list(example["labels"])
    start = next((i for i, label in enumerate(labels) if label != IGNORE), None)
    if start is None or start == 0:
        return None
    end = start
    while end < len(labels) and labels[end] != IGNORE:
        end += 1
    return ids[:start], ids[start:end]


def sharded(ctx: Any) -> bool:
    """Whether the run's strategy partitions parameters across ranks (ZeRO-3, FSDP): every rank
    must then join each forward, so generation runs in lockstep."""
    backends = getattr(getattr(ctx, "recipe", None), "backends", None) or {}
    strategy = backends.get("strategy")
    return bool(strategy is not None and strategy.capabilities.shards_parameters)


def generate(
    model, data, prompts: list[list[int]], settings: GenerationSettings, lockstep: bool = False
) -> list[str]:
    """Greedy continuations, left-padded batches, decoded without special tokens, stripped.
    `lockstep`: parameters are sharded, every rank generates as long as the longest."""
    import torch

    tok, pad = data.tokenizer, data.pad_id
    extra = {"synced_gpus": True} if lockstep else {}
    out: list[str] = []
    for i in range(0, len(prompts), settings.batch_size):
        chunk = prompts[i : i + settings.batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=data.device)
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=data.device
        )
        with torch.no_grad(), data.autocast() or contextlib.nullcontext():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
                **extra,
            )
        out += [t.strip() for t in tok.batch_decode(gen[:, width:], skip_special_tokens=True)]
    return out


def _score(names: list[str], settings: Any, model, data, ctx) -> dict[str, float]:
    """Generate once for these metrics (same generation settings) and score each."""
    first = settings[names[0]]
    world = ctx.world.world_size if ctx is not None else 1
    examples = data.examples
    if first.max_examples:
        examples = examples[: math.ceil(first.max_examples / world)]
    pairs = [prompt_and_reference(e) for e in examples]
    # Rows without targets still generate under ZeRO-3 (every rank calls generate alike).
    lockstep = sharded(ctx)
    dummy = [data.pad_id]
    use = [p for p in pairs if p is not None or lockstep]
    prompts = [p[0] if p is not None else dummy for p in use]
    replies = generate(model, data, prompts, first, lockstep) if prompts else []
    scored = [(r, p) for r, p in zip(replies, use, strict=True) if p is not None]
    preds = [r for r, _ in scored]
    refs = [data.tokenizer.decode(p[1], skip_special_tokens=True).strip() for _, p in scored]
    total = data.collectives.all_reduce_sum  # the same calls, in the same order, on every rank
    count = total(float(len(preds)))
    results: dict[str, float] = {}
    if "rouge" in names:
        sums = rouge_sums(preds, refs, settings["rouge"].use_stemmer) if preds else {}
        for key in ROUGE_KEYS:
            summed = total(sums.get(key, 0.0))
            if count:
                results[key] = summed / count
    if "exact_match" in names:
        hits = total(float(sum(p == r for p, r in zip(preds, refs, strict=True))))
        if count:
            results["exact_match"] = hits / count
    if "bleu" in names:
        stats = bleu_stats(preds, refs) if preds else [0.0] * 10
        stats = [total(x) for x in stats]
        if count:
            results["bleu"] = bleu_from_stats(stats)
    return results


# -- hooks -------------------------------------------------------------------------------------
@hookimpl
def tune_provide(provide):
    docs = {
        "rouge": (RougeSettings, "rouge1/2/L/Lsum F1 of greedy eval generations"),
        "exact_match": (GenerationSettings, "greedy eval generations == reference"),
        "bleu": (GenerationSettings, "sacrebleu corpus BLEU of eval generations"),
    }
    for name, (settings, doc) in docs.items():
        provide.metric(
            name,
            settings,
            doc=doc,
            requires=NEEDS[name],
            # prompt and reference are read off input_ids / labels: causal-LM examples only
            capabilities=Capabilities(
                scores=(LM_EXAMPLES,),
                why={"scores": "it generates a reply to the tokens before the trained ones"},
            ),
        )


@hookimpl
def tune_evaluate(names, settings, model, data, ctx):
    mine = [n for n in NEEDS if n in names]
    if not mine:
        return None
    groups: dict[tuple, list[str]] = {}
    for name in mine:  # metrics with the same generation settings share one generation
        s = settings[name]
        groups.setdefault((s.max_new_tokens, s.batch_size, s.max_examples), []).append(name)
    results: dict[str, float] = {}
    for group in groups.values():
        results.update(_score(group, settings, model, data, ctx))
    return results
