"""Metrics rouge / exact_match / bleu: the libraries' own figures, and a trained model beats an
untrained one on its eval prompts."""

from __future__ import annotations

import json

import pytest
from sacrebleu.metrics import BLEU
from tune.testing import chat_rows, recipe_dict, write_jsonl
from tune_plugin_rouge import (
    ROUGE_KEYS,
    bleu_from_stats,
    bleu_stats,
    prompt_and_reference,
    rouge_sums,
)

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

PREDS = ["the cat sat on the mat", "running quickly home", "olleh", "", "a b c d e"]
REFS = ["a cat sat on a mat", "he runs quick to his home", "olleh", "dlrow", "a b c d"]


def test_rouge_equals_rouge_score_called_directly():
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(PREDS, REFS, strict=True)]
    sums = rouge_sums(PREDS, REFS, use_stemmer=True)
    for key in ROUGE_KEYS:
        assert sums[key] == pytest.approx(sum(s[key].fmeasure for s in direct))
    assert rouge_sums(PREDS, REFS, use_stemmer=False)["rouge1"] != sums["rouge1"]  # stemmer on


def test_bleu_from_summed_stats_equals_corpus_bleu():
    whole = BLEU().corpus_score(PREDS, [REFS]).score
    halves = [bleu_stats(PREDS[:2], REFS[:2]), bleu_stats(PREDS[2:], REFS[2:])]
    summed = [a + b for a, b in zip(*halves, strict=True)]  # as all_reduce_sum over two ranks
    assert bleu_from_stats(summed) == pytest.approx(whole)


def test_prompt_and_reference_split():
    ex = {"input_ids": [1, 2, 3, 4, 5, 6, 7], "labels": [-100, -100, -100, 4, 5, -100, 7]}
    assert prompt_and_reference(ex) == ([1, 2, 3], [4, 5])
    assert prompt_and_reference({"input_ids": [0, 0], "labels": [-100, -100]}) is None


def test_generation_is_in_lockstep_only_when_the_strategy_shards_parameters():
    from types import SimpleNamespace

    from tune.plugin import Capabilities
    from tune_plugin_rouge import sharded

    def ctx(**caps):
        strategy = SimpleNamespace(capabilities=Capabilities(**caps))
        return SimpleNamespace(recipe=SimpleNamespace(backends={"strategy": strategy}))

    assert sharded(ctx(shards_parameters=True))
    assert not sharded(ctx()) and not sharded(None)
    assert not sharded(SimpleNamespace(recipe=SimpleNamespace(backends={})))  # tune eval


def _copy_rows():
    """The quickstart's words as "repeat WORD" -> "the word is WORD". The reversal itself takes
    the quickstart's minutes and a one-word reply scores 0 unless exact; the reply's template
    is learnt in seconds, which ROUGE must see (the template right: ROUGE-L about 0.5-0.75)."""
    rows = []
    for row in chat_rows(512):
        word = row["messages"][0]["content"].split()[-1]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"repeat {word}"},
                    {"role": "assistant", "content": f"the word is {word}"},
                ]
            }
        )
    return rows


def _recipe(tmp_path, steps):
    rows = _copy_rows()
    train = write_jsonl(tmp_path / "copy.jsonl", rows[:480])
    evals = write_jsonl(tmp_path / "eval.jsonl", rows[496:512])
    gen = {"max_new_tokens": 10, "batch_size": 16}
    return recipe_dict(
        tmp_path,
        n_rows=480,
        model={"max_seq_len": 48},
        data={"train": str(train), "eval": str(evals)},
        optimizer={"lr": 3e-3},
        train={"max_steps": steps, "micro_batch_size": 32, "log_every": 50},
        eval={
            "metrics": ["rouge", "exact_match", "bleu"],
            "rouge": gen,
            "exact_match": gen,
            "bleu": gen,
        },
    )


@pytest.mark.slow
def test_trained_model_rouge_far_above_untrained(tmp_path, run_recipe):
    untrained, _ = run_recipe(_recipe(tmp_path, 1), name="untrained.toml")
    trained, _ = run_recipe(_recipe(tmp_path, STEPS), name="trained.toml", overwrite=True)
    before, after = untrained["eval"], trained["eval"]
    assert set(after) >= {*ROUGE_KEYS, "exact_match", "bleu"}
    assert before["rougeL"] < 0.1 and after["rougeL"] > 0.4, (before, after)
    assert after["rouge1"] >= after["rougeL"] and after["rouge2"] > before["rouge2"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any(r["kind"] == "eval" and "rougeL" in r for r in records)


STEPS = 30


@pytest.mark.slow
def test_left_padded_batches_generate_as_one_prompt_at_a_time():
    """Batching must not change a reply: each prompt alone through greedy_generate agrees."""
    import contextlib
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM
    from tune.plugin import greedy_generate
    from tune.testing import tiny_model, tiny_tokenizer
    from tune_plugin_rouge import GenerationSettings, generate

    tok = tiny_tokenizer("tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(tiny_model("tiny-llama")).eval()
    texts = ["reverse a", "reverse longer words here", "hi", "reverse tune please now"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    data = SimpleNamespace(
        tokenizer=tok,
        pad_id=tok.pad_token_id,
        device="cpu",
        autocast=contextlib.nullcontext,
    )
    batched = generate(model, data, prompts, GenerationSettings(max_new_tokens=6, batch_size=4))
    alone = [greedy_generate(model, tok, t, 6).strip() for t in texts]
    assert batched == alone
