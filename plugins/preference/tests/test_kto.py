"""Format `kto` and objective `kto`: bad rows, the paper's formula, and step-for-step parity
with TRL's KTOTrainer on the tiny model with LoRA."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tune.plugin import TuneError
from tune.testing import build_model, load_recipe, run, run_cli, tiny_tokenizer, write_recipe
from tune_plugin_preference.formats import KTOFormat, KTOSettings
from tune_plugin_preference.losses import kto_loss

STEPS = 8


def kto_rows(pairs_rows: list[dict]) -> list[dict]:
    """One labelled reply per pair: the reversal (desirable) and the echo (undesirable) alternate."""
    rows = []
    for i, pair in enumerate(pairs_rows):
        good = i % 3 != 2
        reply = pair["chosen"] if good else pair["rejected"]
        rows.append({"messages": pair["prompt"] + reply, "label": good})
    return rows


def kto_recipe(dpo_recipe_of, rows, **tables):
    recipe = dpo_recipe_of(rows, objective={"name": "kto", "beta": 0.1}, **tables)
    recipe["data"]["format"] = "kto"
    return recipe


def test_kto_format_masks_the_prompt_and_keeps_the_label():
    fmt = KTOFormat(KTOSettings(template="llama-3.1"), tiny_tokenizer(), max_seq_len=128, where="t")
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    (example,) = fmt.encode(fmt.check({**row, "label": False}, "f:1"), "f:1")
    assert fmt.tokenizer.decode(example["completion_ids"]) == "yo<|eot_id|>"
    assert example["desirable"] is False
    for bad in ({**row}, {**row, "label": "yes"}, {**row, "label": 1}):
        with pytest.raises(TuneError, match="needs a boolean"):
            fmt.check(bad, "f:1")


def test_kto_row_without_boolean_label_is_a_file_line_error(tmp_path, pairs, dpo_recipe_of):
    rows = kto_rows(pairs(8))
    rows[2]["label"] = "true"
    result = run_cli("validate", str(write_recipe(tmp_path, kto_recipe(dpo_recipe_of, rows))))
    assert result.returncode == 2
    out = " ".join((result.stdout + result.stderr).split())
    assert "pairs.jsonl:3" in out and "boolean" in out and "Traceback" not in out


def test_kto_with_packing_is_refused(tmp_path, pairs, dpo_recipe_of):
    recipe = kto_recipe(dpo_recipe_of, kto_rows(pairs(8)))
    recipe["data"]["pack"] = True
    result = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 2
    out = " ".join((result.stdout + result.stderr).split())
    assert "objective 'kto' does not train on packed micro-batches" in out, out
    assert "another row's reply" in out and "pack = false" in out and "Traceback" not in out


def test_kto_full_fine_tune_under_zero3_is_refused(tmp_path, pairs, dpo_recipe_of):
    recipe = kto_recipe(
        dpo_recipe_of, kto_rows(pairs(8)), strategy={"name": "deepspeed", "zero_stage": 3}
    )
    recipe.pop("adapt")
    result = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert result.returncode == 2
    out = " ".join((result.stdout + result.stderr).split())
    assert "objective 'kto' keeps a frozen copy" in out and 'method = "lora"' in out, out


def test_kto_loss_is_the_papers_formula():
    ratios = torch.tensor([0.3, -0.2, 1.5, -2.0], dtype=torch.float64)
    desirable = torch.tensor([True, True, False, False])
    beta, z0, wd, wu = 0.5, 0.1, 1.0, 1.33
    got = kto_loss(ratios, desirable, z0, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = [wd * (1 - sig(beta * (r - z0))) for r in ratios[:2].tolist()]
    want += [wu * (1 - sig(beta * (z0 - r))) for r in ratios[2:].tolist()]
    assert got.tolist() == pytest.approx(want, abs=1e-12)


@pytest.mark.slow
def test_kto_matches_trl_step_for_step(tmp_path, pairs, dpo_recipe_of):
    from datasets import Dataset
    from transformers import set_seed
    from trl import KTOConfig, KTOTrainer

    rows = kto_rows(pairs(STEPS * 4))
    path = write_recipe(tmp_path, kto_recipe(dpo_recipe_of, rows, train={"max_steps": STEPS}))
    run(path)
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ours = [r for r in map(json.loads, lines) if r["kind"] == "train"]

    recipe = load_recipe(path)
    set_seed(recipe.train.seed)
    model, tokenizer = build_model(recipe, tmp_path / "trl-build")
    losses = []

    class Recording(KTOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    trl_rows = [
        {"prompt": r["messages"][:-1], "completion": r["messages"][-1:], "label": r["label"]}
        for r in rows
    ]
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        optim="adamw_torch",
        beta=0.1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=recipe.train.seed,
        train_sampling_strategy="sequential",
        max_length=None,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
    )
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(trl_rows),
        processing_class=tokenizer,
    )
    trainer.train()
    assert len(losses) == len(ours) == STEPS
    diffs = [abs(r["loss"] - t) for r, t in zip(ours, losses, strict=True)]
    assert max(diffs) < 1e-4, diffs
    print(f"kto: max |loss diff| over {STEPS} steps = {max(diffs):.2e}")


def test_kto_kl_reference_point_is_the_mean_over_ranks(tmp_path, pairs, dpo_recipe_of):
    """z0 pools the mismatched pairs of every rank: rank 0's loss uses (its sum + rank 1's sum)
    / (its count + rank 1's count), through the objective's cross-rank sum."""
    from types import SimpleNamespace

    from tune.plugin import RunData
    from tune.testing import tokenize
    from tune_plugin_preference.objectives import KTOObjective

    recipe = load_recipe(write_recipe(tmp_path, kto_recipe(dpo_recipe_of, kto_rows(pairs(8)))))
    model, _ = build_model(recipe, tmp_path)
    examples = tokenize(recipe).train
    settings = recipe.selected("objective").settings

    def objective_with(reduce):
        """The objective of a run whose collectives sum over ranks with `reduce`."""
        ctx = SimpleNamespace(collectives=SimpleNamespace(all_reduce_sum=reduce))
        objective = KTOObjective(settings, ctx)
        objective.prepare(model, RunData([], [], 4, 0, "cpu", collectives=ctx.collectives))
        return objective

    def sent() -> dict[int, list[float]]:
        """What each rank sends (its mismatched pairs' log-ratio sum and count), alone."""
        seen: dict[int, list[float]] = {}
        for rank, share in ((0, examples[:4]), (1, examples[4:8])):
            calls = seen.setdefault(rank, [])
            objective = objective_with(lambda v, calls=calls: calls.append(v) or v)
            with torch.no_grad():
                objective.loss(model, objective.collate(share, 0))
        return seen

    for seed in range(20):  # move the policy off the reference (LoRA B starts at zero) until
        torch.manual_seed(seed)  # the pooled z0 is above its clamp at 0
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
        seen = sent()
        (sum0, n0), (sum1, n1) = seen[0], seen[1]
        if sum0 + sum1 > 0:
            break
    assert sum0 / n0 != pytest.approx(sum1 / n1)  # the ranks disagree on their own
    others = iter(seen[1])
    objective = objective_with(lambda v: v + next(others))  # rank 0, rank 1's values added
    with torch.no_grad():
        out = objective.loss(model, objective.collate(examples[:4], 0))
    pooled = (sum0 + sum1) / (n0 + n1)
    assert pooled > 0
    assert out.metrics["kl"][0] == pytest.approx(pooled, rel=1e-6)
