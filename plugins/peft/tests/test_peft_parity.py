"""Parity with the anchor: tune's loop and a plain transformers Trainer + PEFT give the same losses.

Same tiny model, same tokenized examples in the same order, same seed, LoRA settings, optimizer,
schedule, clipping and accumulation. If our loop normalized the loss differently, stepped the
scheduler at another time or clipped differently, the per-step losses would drift apart.
"""

from __future__ import annotations

import json

import pytest
import torch
from tune.testing import (
    final_weights,
    recipe_dict,
    tiny_model,
    tiny_tokenizer,
    tokenize,
    train_losses,
)

STEPS, MICRO, ACCUM, LR, SEED = 8, 2, 2, 2e-3, 42


def trainer_losses(
    tmp_path, recipe, model_name: str, lora: dict, *, accum: int = ACCUM, steps: int = STEPS
) -> list[float]:
    """The anchor: the recipe's examples (tokenized once, by tune's chat format) through a plain
    transformers Trainer + PEFT with the same seed, schedule, clipping and accumulation."""
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

    tokenizer = tiny_tokenizer(model_name)
    examples = tokenize(recipe)

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model(model_name)), dtype=torch.float32)
    set_seed(SEED)  # tune seeds the adapter's init with the recipe's seed, just before it
    model = get_peft_model(base, LoraConfig(lora_dropout=0.0, task_type=TaskType.CAUSAL_LM, **lora))

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=accum,
        max_steps=steps,
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
    return [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]


def parity_recipe(tmp_path, model: str, adapt: dict, accum: int = ACCUM) -> dict:
    return recipe_dict(
        tmp_path,
        n_rows=40,
        model={"path": f"tune:{model}", "max_seq_len": 64},
        adapt=[{"method": "lora", "r": 8, "alpha": 16, **adapt}],
        optimizer={"lr": LR},
        scheduler={"name": "linear", "warmup_steps": 2},
        data={"shuffle": False},
        train={
            "max_steps": STEPS,
            "micro_batch_size": MICRO,
            "grad_accum": accum,
            "seed": SEED,
            "max_grad_norm": 1.0,
        },
    )


@pytest.mark.slow
def test_per_step_losses_match_transformers_trainer(tmp_path, run_recipe):
    _, recipe = run_recipe(parity_recipe(tmp_path, "tiny-llama", {"targets": "all-linear"}))
    ours = train_losses(tmp_path / "run")
    theirs = trainer_losses(
        tmp_path, recipe, "tiny-llama", {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    )
    assert len(theirs) == len(ours) == STEPS
    worst = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    print(f"parity: max per-step loss difference {worst:.2e} over {STEPS} steps")
    # float32 rounding: metrics.jsonl keeps 6 decimals, and tune's head takes its gradient
    # before the loss's 1/tokens scale where autograd scales first (chunked_loss.py)
    assert worst <= 2e-6, list(zip(ours, theirs, strict=True))


@pytest.mark.parametrize("family", ["tiny-qwen3-moe", "tiny-mixtral", "tiny-gpt-oss"])
def test_moe_lora_on_experts_matches_trainer(tmp_path, run_recipe, family):
    """LoRA on attention and the fused experts (router loss on, router frozen) against Trainer +
    PEFT with the same target_parameters. One micro-batch per step: Trainer adds the router
    loss of every micro-batch at full weight, so with accumulation it counts it grad_accum
    times, where tune takes the token-weighted mean (tune.train.router)."""
    _, recipe = run_recipe(parity_recipe(tmp_path, family, {"targets": "all-linear"}, accum=1))
    ours = train_losses(tmp_path / "run")
    lora = {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    }
    theirs = trainer_losses(tmp_path, recipe, family, lora, accum=1)
    assert len(theirs) == len(ours) == STEPS
    worst = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    print(f"{family} parity: max per-step loss difference {worst:.2e} over {STEPS} steps")
    assert worst <= 1e-5, list(zip(ours, theirs, strict=True))

    # The adapters really reached the experts: their LoRA factors trained, and the router loss
    # was part of the optimized loss and logged on its own.
    weights = final_weights(tmp_path / "run")
    expert_b = [v for k, v in weights.items() if "experts" in k and "lora_B" in k]
    assert expert_b and all(float(v.abs().max()) > 0 for v in expert_b)
    assert not any(".gate." in k or ".router." in k for k in weights)
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(r["router_loss"] > 0 for r in records if r["kind"] == "train")
