"""Step for step with TRL's GRPOTrainer: the same tiny model, prompts, completions (generation
fixed: a rollout engine registered here and TRL's `rollout_func` return the same tokens),
reward function and optimizer give the same per-step loss, while the weights move."""

from __future__ import annotations

import json
import random

import pytest
from tune.plugin import Completions, Rollout, hookimpl
from tune.testing import build_model, load_recipe, run, tokenize, write_recipe

STEPS, G, PROMPTS = 6, 4, 2  # optimizer steps, completions per prompt, prompts per step
LR = 1e-2  # large, so the weights move and each step's loss depends on the updates before it
BETA = 0.5  # the KL to the initial model (a frozen copy on both sides) depends on the weights


def fixed_completion(prompt_ids: list[int], j: int, step: int, eos: int) -> list[int]:
    """The j-th completion of a prompt at a step: 1 to 6 seeded tokens, some ending in eos."""
    rng = random.Random(hash((tuple(prompt_ids), j, step)) & 0xFFFFFFFF)
    ids = [rng.randrange(60, 120) for _ in range(rng.randint(1, 6))]
    return ids + [eos] if rng.random() < 0.5 else ids


def reward(prompts, completions, **_):
    """A deterministic reward of the text: varied within each group."""
    return [float(len(c) % 5) + 0.1 * sum(map(ord, c)) % 1.0 for c in completions]


class Fixed(Rollout):
    """Returns `fixed_completion` for each prompt: generation fixed, the same as TRL's side."""

    calls = 0

    def generate(self, model, prompts, sampling):
        step = Fixed.calls
        Fixed.calls += 1
        eos = sampling.eos_token_ids[0]
        ids = [fixed_completion(p, i % G, step, eos) for i, p in enumerate(prompts)]
        return Completions(ids, [False] * len(ids))


class FixedPlugin:
    @hookimpl
    def tune_provide(self, provide):
        provide.rollout("fixed", None, doc="fixed completions (tests)", build=Fixed)


def _recipe(tmp_path):
    rows = [{"prompt": f"reverse {w}"} for w in ["cat", "dog", "sun", "map"] * 3]
    (tmp_path / "rewards.py").write_text(
        "def reward(prompts, completions, **_):\n"
        "    return [float(len(c) % 5) + 0.1 * sum(map(ord, c)) % 1.0 for c in completions]\n"
    )
    from tune.testing import recipe_dict, write_jsonl

    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    return recipe_dict(
        tmp_path,
        data={"format": "prompt", "train": str(data), "template": "llama-3.1", "shuffle": False},
        # beta > 0: the KL to the reference (the initial model, a frozen copy on both sides)
        # makes each step's loss depend on the weights the earlier steps produced.
        objective={"name": "grpo", "num_generations": G, "max_completion_length": 8, "beta": BETA},
        reward=[{"name": "python", "function": "rewards.py:reward"}],
        rollout={"name": "fixed"},
        optimizer={"name": "adamw", "lr": LR, "weight_decay": 0.0},
        train={"max_steps": STEPS, "micro_batch_size": PROMPTS, "max_grad_norm": 1.0},
    )


def _trl_losses(path, tmp_path):
    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    recipe = load_recipe(path)
    examples = tokenize(recipe).train
    prompt_ids = {json.loads(e["meta"])["prompt"]: e["prompt_ids"] for e in examples}
    set_seed(recipe.train.seed)
    model, tokenizer = build_model(recipe, tmp_path / "trl-build")
    # TRL loads its frozen reference from the model's folder: save the initial weights there
    model.save_pretrained(tmp_path / "initial")
    model.config._name_or_path = str(tmp_path / "initial")
    eos = tokenizer.eos_token_id
    calls = [0]

    def rollout_func(prompts, trainer):
        step = calls[0]
        calls[0] += 1
        ids, comps = [], []
        for i, p in enumerate(prompts):
            ids.append(prompt_ids[p])
            comps.append(fixed_completion(prompt_ids[p], i % G, step, eos))
        return {
            "prompt_ids": ids,
            "completion_ids": comps,
            "logprobs": [[0.0] * len(c) for c in comps],
        }

    losses = []

    class Recording(GRPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=PROMPTS * G,
        num_generations=G,
        max_completion_length=8,
        gradient_accumulation_steps=1,
        max_steps=STEPS,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        loss_type="dapo",
        beta=BETA,
        shuffle_dataset=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=recipe.train.seed,
        use_cpu=True,
        bf16=False,
        dataloader_num_workers=0,
    )
    trainer = Recording(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompt_ids_in_order(path)]),
        processing_class=tokenizer,
        rollout_func=rollout_func,
    )
    trainer.train()
    return losses


def prompt_ids_in_order(path):
    rows = [json.loads(x) for x in (path.parent / "prompts.jsonl").read_text().splitlines()]
    return [r["prompt"] for r in rows]


@pytest.mark.slow
def test_grpo_matches_trl_step_for_step(tmp_path, tune_plugin):
    pytest.importorskip("trl")
    tune_plugin(FixedPlugin(), "fixed")
    path = write_recipe(tmp_path, _recipe(tmp_path))
    Fixed.calls = 0
    run(path)
    ours = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ]
    theirs = _trl_losses(path, tmp_path)
    assert len(ours) == len(theirs) == STEPS
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1e-4, (ours, theirs)
    assert len({round(x, 4) for x in ours}) > 1  # the steps differ: something was learned
