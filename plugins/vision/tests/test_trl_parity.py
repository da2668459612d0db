"""Step-for-step parity with TRL's SFTTrainer on the same tiny vision-language model: same
rows, order, seed, LoRA init and optimizer give the same per-step loss (padded batches)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tune.testing import build_model, load_recipe, run, write_recipe

STEPS = 8
BATCH = 2


def _trl_losses(recipe_path, rows, tmp_path):
    """Per-step loss of TRL's SFTTrainer (prompt-completion rows, completion-only loss) on the
    model tune builds (same LoRA init)."""
    from datasets import Dataset
    from PIL import Image
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    recipe = load_recipe(recipe_path)
    set_seed(recipe.train.seed)
    model, tokenizer = build_model(recipe, tmp_path / "trl-build")
    losses = []

    class Recording(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    base = os.path.dirname(recipe.data.train_files[0])
    data = [
        {
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {
                            "type": "text",
                            "text": r["messages"][0]["content"].replace("<image>", ""),
                        },
                    ],
                }
            ],
            "completion": [
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": r["messages"][1]["content"]}],
                }
            ],
            "images": [Image.open(os.path.join(base, r["images"][0])).convert("RGB")],
        }
        for r in rows
    ]
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        max_steps=STEPS,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
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
        train_dataset=Dataset.from_list(data),
        processing_class=tokenizer.image_text_processor,
    )
    trainer.train()
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tune:tiny-qwen2-vl", "tune:tiny-llava"])
def test_lora_matches_trl_step_for_step(tmp_path, vision_recipe_of, model):
    recipe = vision_recipe_of(
        n_train=STEPS * BATCH,
        n_eval=0,
        model={"path": model},
        train={"micro_batch_size": BATCH},
    )
    path = write_recipe(tmp_path, recipe)
    run(path)
    records = [
        json.loads(line)
        for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    lines = Path(recipe["data"]["train"]).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines]
    trl = _trl_losses(path, rows, tmp_path)
    assert len(records) == len(trl) == STEPS
    diffs = [abs(r["loss"] - t) for r, t in zip(records, trl, strict=True)]
    print(f"{model}: per-step |tune - trl| = {[f'{d:.1e}' for d in diffs]}, max {max(diffs):.2e}")
    assert max(diffs) < 1e-4, diffs
