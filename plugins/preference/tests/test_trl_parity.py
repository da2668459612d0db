"""Step-for-step parity with TRL's DPOTrainer: same tiny model, LoRA init, pairs, order, beta
and optimizer give the same per-step loss and reward accuracy."""

from __future__ import annotations

import json

import pytest
from tune.testing import build_model, load_recipe, run, write_recipe

STEPS = 8


def _trl_steps(recipe_path, rows, loss_type, beta, tmp_path):
    """Per-step (loss, rewards/accuracies, rewards/margins) of TRL on the model tune builds."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    recipe = load_recipe(recipe_path)
    set_seed(recipe.train.seed)
    model, tokenizer = build_model(recipe, tmp_path / "trl-build")
    losses = []

    class Recording(DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=STEPS,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        beta=beta,
        loss_type=[loss_type],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=recipe.train.seed,
        train_sampling_strategy="sequential",
        max_length=None,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
    )
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    return losses, [(h["rewards/accuracies"], h["rewards/margins"]) for h in logs]


@pytest.mark.slow
@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("ipo", 0.5)])
def test_dpo_matches_trl_step_for_step(tmp_path, pairs, dpo_recipe_of, loss_type, beta):
    rows = pairs(STEPS * 4)
    recipe = dpo_recipe_of(
        rows,
        objective={"loss_type": loss_type, "beta": beta},
        train={"max_steps": STEPS},
    )
    path = write_recipe(tmp_path, recipe)
    run(path)
    records = [
        json.loads(line)
        for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    trl_losses, trl_rewards = _trl_steps(path, rows, loss_type, beta, tmp_path)
    assert len(records) == len(trl_losses) == STEPS
    diffs = [abs(r["loss"] - t) for r, t in zip(records, trl_losses, strict=True)]
    assert max(diffs) < 1e-4, diffs
    for record, (accuracy, margin) in zip(records, trl_rewards, strict=True):
        assert record["rewards/accuracies"] == pytest.approx(accuracy, abs=1e-6)
        assert record["rewards/margins"] == pytest.approx(margin, abs=1e-4)
    print(f"{loss_type}: max |loss diff| over {STEPS} steps = {max(diffs):.2e}")
