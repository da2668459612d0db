"""Format `preference` and objective `dpo` in real runs on the tiny Llama."""

from __future__ import annotations

import gc
import json
import math

import pytest
from tune.plugin import IGNORE, RunData, TuneError
from tune.testing import (
    final_weights,
    load_recipe,
    max_weight_diff,
    run,
    run_cli,
    tiny_tokenizer,
    train_losses,
    write_recipe,
)
from tune_plugin_preference.formats import PreferenceFormat, PreferenceSettings
from tune_plugin_preference.objectives import DPOObjective


def _prepared(objective, model):
    """The objective after its one entry point, as a run calls it before the first step."""
    objective.prepare(model, RunData(train=[], eval=[], micro_batch_size=4, pad_id=0, device="cpu"))
    return objective


def _format(max_seq_len: int = 256, **keys) -> PreferenceFormat:
    settings = PreferenceSettings(template="llama-3.1", **keys)
    return PreferenceFormat(settings, tiny_tokenizer(), max_seq_len=max_seq_len, where="test")


def _encode(fmt: PreferenceFormat, row: dict) -> list[dict]:
    return fmt.encode(fmt.check(row, "f:1"), "f:1")


def _records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


# -- the format -----------------------------------------------------------------------------------
def test_trl_and_sharegpt_layouts_give_the_same_pair():
    fmt = _format()
    trl = {
        "prompt": [{"role": "user", "content": "reverse cat"}],
        "chosen": [{"role": "assistant", "content": "tac"}],
        "rejected": [{"role": "assistant", "content": "cat"}],
    }
    sharegpt = {
        "conversations": [{"from": "human", "value": "reverse cat"}],
        "chosen": {"from": "gpt", "value": "tac"},
        "rejected": {"from": "gpt", "value": "cat"},
    }
    strings = {"prompt": "reverse cat", "chosen": "tac", "rejected": "cat"}
    (a,), (b,), (c,) = _encode(fmt, trl), _encode(fmt, sharegpt), _encode(fmt, strings)
    assert a == b == c
    tok = fmt.tokenizer
    for side, reply in (("chosen", "tac"), ("rejected", "cat")):
        trained = [t for t in a[f"{side}_labels"] if t != IGNORE]
        assert tok.decode(trained) == reply + "<|eot_id|>"  # the reply and its end tag only
        prompt = tok.apply_chat_template(trl["prompt"], tokenize=False, add_generation_prompt=True)
        untrained = a[f"{side}_ids"][: a[f"{side}_labels"].count(IGNORE)]
        assert tok.decode(untrained) == prompt


def test_truncation_keeps_prompt_end_and_reply_start():
    fmt = _format(max_seq_len=60, max_prompt_len=40)
    row = {"prompt": "x" * 30 + " the end", "chosen": "y" * 50, "rejected": "short"}
    (example,) = _encode(fmt, row)
    tok = fmt.tokenizer
    n_prompt = example["chosen_labels"].count(IGNORE)
    assert len(example["chosen_ids"]) <= 60 and len(example["rejected_ids"]) <= 60
    prompt = tok.decode(example["chosen_ids"][:n_prompt])
    assert prompt.startswith("<|begin_of_text|>") or example["chosen_ids"][0] == tok.bos_token_id
    assert "the end" in prompt
    assert tok.decode(example["chosen_ids"][n_prompt:]).startswith("yyyy")
    assert fmt.counts["prompt_truncated"] >= 1 and fmt.counts["truncated"] == 1


@pytest.mark.parametrize(
    "row,message",
    [
        ({"prompt": "hi", "rejected": "no"}, "no 'chosen'"),
        ({"prompt": "hi", "chosen": None, "rejected": "no"}, "'chosen' reply is null"),
        ({"prompt": "hi", "chosen": "yes", "rejected": {"role": "gpt"}}, "expected role/content"),
        (
            {"prompt": "hi", "chosen": [{"role": "assistant", "content": None}], "rejected": "x"},
            "'chosen' message 0 (role 'assistant') has content: null",
        ),
        ({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, "robot"),
        ({"prompt": "hi", "chosen": "", "rejected": "no"}, "'chosen' is empty"),
        ({"prompt": "hi", "chosen": "yes", "rejected": []}, "'rejected' is empty"),
        ({"chosen": "yes", "rejected": "no"}, "no prompt"),
    ],
)
def test_bad_rows_name_the_problem(row, message):
    with pytest.raises(TuneError) as err:
        _encode(_format(), row)
    assert message in str(err.value)


def test_bad_pair_is_a_file_line_error_with_exit_2(tmp_path, pairs, dpo_recipe_of):
    rows = pairs(8)
    rows[4]["chosen"] = [{"role": "assistant", "content": "  "}]
    path = write_recipe(tmp_path, dpo_recipe_of(rows))
    result = run_cli("validate", str(path))
    assert result.returncode == 2, result.stderr
    out = " ".join((result.stdout + result.stderr).split())
    assert "pairs.jsonl:5" in out and "'chosen' is empty" in out
    assert "Traceback" not in out


def test_preference_data_needs_a_preference_objective(tmp_path, dpo_recipe_of):
    recipe = dpo_recipe_of()
    recipe.pop("objective")  # the default, causal_lm
    result = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 2
    out = " ".join((result.stdout + result.stderr).split())
    assert "gives 'preference' examples" in out and "Traceback" not in out


def test_preference_file_given_to_chat_format_fails_clearly(tmp_path, dpo_recipe_of):
    recipe = dpo_recipe_of()
    recipe.pop("objective")
    recipe["data"]["format"] = "chat"
    result = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 2
    out = " ".join((result.stdout + result.stderr).split())
    assert "pairs.jsonl:1" in out and "Traceback" not in out


def test_perplexity_on_pairs_is_refused(tmp_path, dpo_recipe_of):
    recipe = dpo_recipe_of(eval={"metrics": ["perplexity"]})
    recipe["data"]["eval_fraction"] = 0.25
    result = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 2
    out = " ".join((result.stdout + result.stderr).split())
    assert "metric 'perplexity' scores 'lm' examples" in out and "Traceback" not in out
    assert "use metrics that score them (" in out and "preference" in out  # the way out


def test_preference_metric_on_lm_examples_is_refused(tmp_path):
    """The metric declares what it scores: pairs and KTO replies, not a causal-LM run's."""
    from tune.testing import recipe_dict

    recipe = recipe_dict(tmp_path, 16, eval={"metrics": ["preference"]})
    recipe["data"]["eval_fraction"] = 0.25
    result = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 2
    out = " ".join((result.stdout + result.stderr).split())
    assert "metric 'preference' scores 'preference' or 'kto' examples" in out, out
    assert "Traceback" not in out


# -- the reference model --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("adapter", [True, False])
@pytest.mark.parametrize("identical", [True, False])
def test_step0_loss_is_log2(tmp_path, pairs, dpo_recipe_of, adapter, identical):
    """At step 0 the policy must equal the reference: every reward is 0 and the loss is log 2,
    even with beta 100 (any gap between them would be multiplied by 100)."""
    rows = pairs(8)
    if identical:
        rows = [dict(r, rejected=r["chosen"]) for r in rows]
    recipe = dpo_recipe_of(rows, objective={"beta": 100.0}, train={"max_steps": 2})
    if not adapter:
        recipe.pop("adapt")
    run(write_recipe(tmp_path, recipe))
    first = _records(tmp_path / "run")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    second = _records(tmp_path / "run")[1]
    if not identical:  # it did train, away from the reference
        assert abs(second["loss"] - math.log(2)) > 1e-4


def test_adapter_reference_allocates_no_second_model(tmp_path, dpo_recipe_of):
    import torch
    from tune.testing import build_model

    recipe = load_recipe(write_recipe(tmp_path, dpo_recipe_of()))
    model, _ = build_model(recipe, tmp_path)
    objective = DPOObjective(recipe.selected("objective").settings, None)

    def modules() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.nn.Module))

    before_modules = modules()
    params = sum(p.numel() for p in model.parameters())
    _prepared(objective, model)
    batch = objective.collate(tune_plugin_preference_examples(recipe), 0)
    out = objective.loss(model, batch)
    out.loss.backward()
    assert objective.reference.copy is None and objective.reference.mode == "adapter"
    assert modules() == before_modules
    assert sum(p.numel() for p in model.parameters()) == params
    # a full fine-tune, by contrast, keeps a frozen copy: same parameter count again
    full = DPOObjective(recipe.selected("objective").settings, None)
    base = model.get_base_model()
    _prepared(full, base)
    assert full.reference.copy is not None
    assert not any(p.requires_grad for p in full.reference.copy.parameters())


def tune_plugin_preference_examples(recipe) -> list[dict]:
    from tune.testing import tokenize

    return tokenize(recipe).train[:4]


# -- accumulation, resume, packing ----------------------------------------------------------------
@pytest.mark.slow
def test_accumulation_is_exact(tmp_path, pairs, dpo_recipe_of):
    rows = pairs(16)
    results = {}
    for micro, accum in ((4, 1), (1, 4)):
        out = tmp_path / f"run-{micro}x{accum}"
        recipe = dpo_recipe_of(
            rows,
            train={"micro_batch_size": micro, "grad_accum": accum, "output_dir": str(out)},
        )
        run(write_recipe(tmp_path, recipe, f"r{micro}.toml"))
        results[micro] = (train_losses(out), final_weights(out), _records(out))
    (loss_a, w_a, rec_a), (loss_b, w_b, rec_b) = results[4], results[1]
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert max_weight_diff(w_a, w_b) < 1e-5
    for a, b in zip(rec_a, rec_b, strict=True):
        assert a["rewards/accuracies"] == pytest.approx(b["rewards/accuracies"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_resume_is_exact(tmp_path, pairs, dpo_recipe_of):
    rows = pairs(16)
    straight = tmp_path / "straight"
    recipe = dpo_recipe_of(rows, train={"max_steps": 4, "output_dir": str(straight)})
    run(write_recipe(tmp_path, recipe, "a.toml"))
    resumed = tmp_path / "resumed"
    recipe = dpo_recipe_of(
        rows, train={"max_steps": 4, "save_every": 2, "output_dir": str(resumed)}
    )
    path = write_recipe(tmp_path, recipe, "b.toml")
    run(path)
    checkpoints = sorted(p for p in resumed.rglob("*") if p.is_dir() and p.name == "step-2")
    assert checkpoints, list(resumed.iterdir())
    run(path, resume_from=checkpoints[0], overwrite=True)
    assert train_losses(resumed)[-2:] == pytest.approx(train_losses(straight)[-2:], abs=1e-6)
    assert max_weight_diff(final_weights(straight), final_weights(resumed)) < 1e-6


@pytest.mark.slow
def test_packed_batches_keep_pairs_whole_and_match_padded(tmp_path, pairs, dpo_recipe_of):
    rows = pairs(8)
    padded, packed = tmp_path / "padded", tmp_path / "packed"
    recipe = dpo_recipe_of(
        rows, train={"max_steps": 1, "micro_batch_size": 8, "output_dir": str(padded)}
    )
    run(write_recipe(tmp_path, recipe, "a.toml"))
    recipe = dpo_recipe_of(
        rows, train={"max_steps": 1, "micro_batch_size": 8, "output_dir": str(packed)}
    )
    recipe["data"]["pack"] = True
    run(write_recipe(tmp_path, recipe, "b.toml"))
    a, b = _records(padded)[0], _records(packed)[0]
    for key in ("loss", "logps/chosen", "logps/rejected"):
        assert a[key] == pytest.approx(b[key], abs=1e-4), key


def test_packed_collate_never_splits_a_pair(tmp_path, dpo_recipe_of):
    recipe = load_recipe(write_recipe(tmp_path, dpo_recipe_of()))
    examples = tune_plugin_preference_examples(recipe)
    objective = DPOObjective(recipe.selected("objective").settings, None)
    batch = objective.collate_packed([examples[:3], examples[3:]], 0)
    assert objective.count(batch) == 4
    for k, example in enumerate(examples):
        for j, side in enumerate(("chosen", "rejected")):
            where = batch["segments"] == 2 * k + j
            rows = where.any(-1).nonzero().flatten().tolist()
            assert len(rows) == 1  # one sequence, one row
            assert batch["input_ids"][where].tolist() == example[f"{side}_ids"]


def test_eval_padding_counts_for_nothing(tmp_path, dpo_recipe_of):
    recipe = load_recipe(write_recipe(tmp_path, dpo_recipe_of()))
    examples = tune_plugin_preference_examples(recipe)
    objective = DPOObjective(recipe.selected("objective").settings, None)
    batch = objective.collate(examples[:2] + [objective.empty_like(examples[0])], 0)
    assert objective.count(batch) == 2


@pytest.mark.slow
def test_eval_metric_reports_rewards(tmp_path, pairs, dpo_recipe_of):
    recipe = dpo_recipe_of(pairs(32), eval={"metrics": ["preference"]}, train={"max_steps": 2})
    recipe["data"]["eval_fraction"] = 0.25
    summary, _ = run(write_recipe(tmp_path, recipe))
    final = summary["eval"]
    assert set(final) >= {"eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"}
    assert 0.0 <= final["eval_rewards/accuracies"] <= 1.0


def test_full_fine_tune_reference_under_zero3_is_refused(tmp_path, dpo_recipe_of):
    recipe = dpo_recipe_of(strategy={"name": "deepspeed", "zero_stage": 3})
    recipe.pop("adapt")
    result = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 2
    out = " ".join((result.stdout + result.stderr).split())
    assert "keeps a frozen copy of the model as its reference" in out, out
    # the ways out: precompute the reference, or train an adapter
    assert "precompute_ref = true" in out and 'method = "lora"' in out
    assert "Traceback" not in out


def test_sft_weight_adds_the_chosen_per_token_nll(tmp_path, dpo_recipe_of):
    from tune.testing import build_model, tokenize

    recipe = load_recipe(write_recipe(tmp_path, dpo_recipe_of()))
    model, _ = build_model(recipe, tmp_path)
    batch = None
    losses = []
    for weight in (0.0, 0.5):
        settings = recipe.selected("objective").settings.model_copy(update={"sft_weight": weight})
        objective = _prepared(DPOObjective(settings, None), model)
        batch = objective.collate(tokenize(recipe).train[:4], 0)
        losses.append(float(objective.loss(model, batch).loss))
    import torch
    from tune.plugin import token_logprobs
    from tune_plugin_preference.objectives import sequence_logps

    with torch.no_grad():
        per_token = token_logprobs(model, {"input_ids": batch["input_ids"]}, batch["labels"], False)
        sums, counts = sequence_logps(per_token, batch["labels"])
    nll = float((-sums[:4] / counts[:4]).sum())
    assert losses[1] - losses[0] == pytest.approx(0.5 * nll, rel=1e-5)


@pytest.mark.parametrize("pack", [False, True])
def test_log_probs_come_chunked_and_equal_the_full_logits_way(tmp_path, dpo_recipe_of, pack):
    """The objectives take label log-probs from tune.plugin.token_logprobs: the head only ever
    sees a chunk of target positions (no [rows, width, vocab] logits), and the loss and its
    gradients equal those computed from the full logits (padded and packed batches)."""
    import tune_plugin_preference.objectives as objectives
    from tune.plugin import token_logprobs
    from tune.testing import build_model, tokenize

    recipe = load_recipe(write_recipe(tmp_path, dpo_recipe_of()))
    model, _ = build_model(recipe, tmp_path)
    objective = _prepared(DPOObjective(recipe.selected("objective").settings, None), model)
    pairs = tokenize(recipe).train[:4]
    batch = (
        objective.collate_packed([pairs[:2], pairs[2:]], 0) if pack else objective.collate(pairs, 0)
    )
    head = model.get_output_embeddings()
    seen = []
    hook = head.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))

    def run_loss():
        model.zero_grad(set_to_none=True)
        out = objective.loss(model, batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return float(out.loss), out.metrics, grads

    chunked = run_loss()
    hook.remove()
    rows, width = batch["input_ids"].shape
    assert seen and all(len(shape) == 2 and shape[0] < rows * width for shape in seen), seen
    plain = objectives.token_logprobs
    try:
        objectives.token_logprobs = lambda m, i, lab, _: token_logprobs(m, i, lab, chunked=False)
        full = run_loss()
    finally:
        objectives.token_logprobs = plain
    assert chunked[0] == pytest.approx(full[0], abs=1e-5)
    for key, value in full[1].items():
        assert chunked[1][key] == pytest.approx(value, abs=1e-4), key
    assert chunked[2].keys() == full[2].keys() and chunked[2]
    worst = max(float((chunked[2][n] - full[2][n]).abs().max()) for n in full[2])
    assert worst <= 1e-5, worst
