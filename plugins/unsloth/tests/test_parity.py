"""Parity with the anchor: `tune run` with loader = "unsloth" against Unsloth's own recommended
loop (FastLanguageModel + get_peft_model + TRL's SFTTrainer), same tiny model, data, LoRA,
optimizer, seed and order: per-step losses agree within 1e-4 for 8 steps, padded and packed.

Runs on Unsloth's CPU backend (2026.10.9 and later, no GPU): `make test-unsloth` builds that
environment. Packed: Unsloth's CPU SFTTrainer turns `packing` off (it keeps packed
examples apart only with FlashAttention), so its side trains the same examples padded, grouped
as tune packed them; equal losses then also show that tune's packed rows (two rows per
micro-batch, flattened into one by the plugin) keep their examples apart.
"""

from __future__ import annotations

import random
import string

import pytest
import tune_plugin_unsloth
from tune.testing import (
    chat_rows,
    load_recipe,
    recipe_dict,
    run,
    tiny_model,
    tokenize,
    train_losses,
    write_jsonl,
    write_recipe,
)
from tune_plugin_unsloth import backend_here

# The anchor is Unsloth's CPU backend (fp32, stock kernels: exact to float rounding); on a GPU its
# fused kernels are not held to 1e-4 here.
pytestmark = pytest.mark.skipif(
    backend_here()[0] != "cpu", reason=f"needs Unsloth's CPU backend: {backend_here()[1]}"
)

SEED, STEPS, LR, RANK, ALPHA = 0, 8, 1e-3, 8, 16
TOL = 1e-4


def _recipe(tmp_path, rows, **train):
    data = write_jsonl(tmp_path / "rows.jsonl", rows)  # recipe_dict writes train.jsonl
    raw = recipe_dict(
        tmp_path,
        model={
            "loader": "unsloth",
            "path": str(tiny_model()),
            "max_seq_len": train.pop("max_seq_len", 128),
            "dtype": "float32",
        },
        adapt=[{"method": "lora", "r": RANK, "alpha": ALPHA, "dropout": 0.0}],
        data={"format": "chat", "train": str(data), "template": "llama-3.1", "shuffle": False,
              "pack": train.pop("pack", False)},
        optimizer={"name": "adamw", "lr": LR, "weight_decay": 0.0},
        scheduler={"name": "constant"},
        train={"max_steps": STEPS, "grad_accum": 1, "seed": SEED, "max_grad_norm": 1.0,
               "gradient_checkpointing": True, **train},
    )  # fmt: skip
    return write_recipe(tmp_path, raw)


def _unsloth_own_loop(tmp_path, examples: list[dict], batch_size: int) -> list[float]:
    """Unsloth's recommended recipe, on `examples` in this order: per-step training losses."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(tiny_model()), max_seq_length=128, dtype=torch.float32,
        load_in_4bit=False, use_gradient_checkpointing="unsloth", random_state=SEED,
    )  # fmt: skip
    model = FastLanguageModel.get_peft_model(
        model, r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", random_state=SEED,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth",
    )  # fmt: skip
    losses: list[float] = []

    class Recording(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1, max_steps=STEPS, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=1.0, bf16=False, fp16=False, seed=SEED, data_seed=SEED,
        train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
        report_to="none", dataset_num_proc=None, max_length=None,
    )  # fmt: skip
    trainer = Recording(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    return losses


def _table(name: str, ours: list[float], theirs: list[float]) -> str:
    lines = [f"{name}: step  tune+unsloth  unsloth+trl  |diff|"]
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False), 1):
        lines.append(f"  {i:>2}  {a:.6f}  {b:.6f}  {abs(a - b):.2e}")
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def unsloth_first():
    import unsloth  # noqa: F401  (as tune run does: patches before transformers is used)


def test_padded_losses_match_unsloths_own_loop(tmp_path):
    recipe_path = _recipe(tmp_path, chat_rows(2 * STEPS), micro_batch_size=2)
    summary, _ = run(recipe_path)
    ours = train_losses(tmp_path / "run")
    examples = tokenize(load_recipe(recipe_path)).train  # shuffle = false: this order
    theirs = _unsloth_own_loop(tmp_path, examples[: 2 * STEPS], batch_size=2)
    print(_table("padded", ours, theirs))
    assert len(ours) == len(theirs) == STEPS
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < TOL, _table(
        "padded", ours, theirs
    )
    assert ours[-1] < ours[0]  # it trained


def _same_length_rows(n: int) -> list[dict]:
    """Chats of one token length (6-letter words, byte-level tokenizer): packing puts exactly
    two into each row of twice that length, in order."""
    rng = random.Random(1)
    words = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(n)]
    return [
        {"messages": [{"role": "user", "content": f"reverse {w}"},
                      {"role": "assistant", "content": w[::-1]}]}
        for w in words
    ]  # fmt: skip


def test_packed_losses_match_unsloths_own_loop(tmp_path, monkeypatch):
    rows = _same_length_rows(4 * STEPS)
    probe = _recipe(tmp_path, rows)
    examples = tokenize(load_recipe(probe)).train
    length = len(examples[0]["input_ids"])
    assert {len(e["input_ids"]) for e in examples} == {length}
    # Two examples per packed row, two rows per micro-batch (flattened into one row for Unsloth).
    recipe_path = _recipe(tmp_path, rows, max_seq_len=2 * length, pack=True, micro_batch_size=2)
    shapes = []  # (rows in, rows out) of each training forward
    hook = tune_plugin_unsloth._as_unsloth_expects

    def spy(module, args, kwargs):
        rows_in = kwargs["input_ids"].shape[0]
        args, kwargs = hook(module, args, kwargs)
        shapes.append((rows_in, kwargs["input_ids"].shape[0]))
        return args, kwargs

    monkeypatch.setattr(tune_plugin_unsloth, "_as_unsloth_expects", spy)
    summary, _ = run(recipe_path)
    # Two packed rows reach Unsloth as one, every step (the hook sits on the PEFT wrapper and on
    # the model inside; the second sees the row already flattened).
    assert shapes.count((2, 1)) == STEPS and {out for _, out in shapes} == {1}, shapes
    ours = train_losses(tmp_path / "run")
    # tune's packed plan (tune.data.batching): first-fit bins in order, then the bins shuffled
    # with Random(seed * 7919 + epoch); a micro-batch takes the next two bins.
    bins = [[2 * i, 2 * i + 1] for i in range(len(examples) // 2)]
    random.Random(SEED * 7919).shuffle(bins)
    order = [examples[i] for b in bins for i in b]
    theirs = _unsloth_own_loop(tmp_path, order, batch_size=4)
    print(_table("packed", ours, theirs))
    assert summary["steps"] == len(ours) == len(theirs) == STEPS
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < TOL, _table(
        "packed", ours, theirs
    )
