"""Parity with the anchor: tune's loop and a plain transformers Trainer + PEFT give the same losses.

Same tiny model, same tokenized examples in the same order, same seed, LoRA settings, optimizer,
schedule, clipping and accumulation. If our loop normalized the loss differently, stepped the
scheduler at another time or clipped differently, the per-step losses would drift apart.
"""

from __future__ import annotations

import json

import pytest
import torch
from tune.testing import recipe_dict, tiny_model, tiny_tokenizer, tokenize

STEPS, MICRO, ACCUM, LR, SEED = 8, 2, 2, 2e-3, 42


@pytest.mark.slow
def test_per_step_losses_match_transformers_trainer(tmp_path, run_recipe):
    data = recipe_dict(
        tmp_path,
        n_rows=40,
        adapt=[{"method": "lora", "r": 8, "alpha": 16, "targets": "all-linear"}],
        optimizer={"lr": LR},
        scheduler={"name": "linear", "warmup_steps": 2},
        data={"shuffle": False},
        train={
            "max_steps": STEPS,
            "micro_batch_size": MICRO,
            "grad_accum": ACCUM,
            "seed": SEED,
            "max_grad_norm": 1.0,
        },
    )
    _, recipe = run_recipe(data)
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    ours = [r["loss"] for r in records if r["kind"] == "train"]

    # The anchor: the same examples (tokenized once, by tune's chat format) through Trainer.
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    tokenizer = tiny_tokenizer("tiny-llama")
    examples = tokenize(recipe)

    set_seed(SEED)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model()), dtype=torch.float32)
    model = get_peft_model(
        base,
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules="all-linear",
            lora_dropout=0.0,
            task_type=TaskType.CAUSAL_LM,
        ),
    )

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUM,
        max_steps=STEPS,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=2,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=SEED,
        optim="adamw_torch",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = InOrder(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples.train),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    trainer.train()
    theirs = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    assert len(theirs) == len(ours) == STEPS
    worst = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    print(f"parity: max per-step loss difference {worst:.2e} over {STEPS} steps")
    assert worst <= 1e-6, list(zip(ours, theirs, strict=True))
