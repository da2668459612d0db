"""Tiny models built from a config, and what a finished run holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tune.testing.runs import plugin_manager

# SmolLM2-135M's shape (its config.json): a pretrained-like width, heads and 49k vocabulary for
# benches and tests that must hold on realistic shapes; fewer layers where cost matters.
SMOLLM2_135M: dict[str, Any] = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
}


def save_random_llama(target: Path, shape: dict[str, Any], tokenizer: Any, seed: int = 0) -> Path:
    """A random-init Llama of `shape` with `tokenizer`'s special ids, saved with the tokenizer
    to `target` (a model folder as from_pretrained reads it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def tiny_model(name: str = "tiny-llama", overrides: dict | None = None, seed: int = 0) -> Path:
    """The offline tiny model `tune:<name>` written to a local folder (as from_pretrained reads)."""
    from tune.builtin.tiny import materialize

    return materialize(name, overrides or {}, seed)


def tiny_tokenizer(name: str = "tiny-llama"):
    """The byte-level tokenizer of `tune:<name>`, with that model's chat template."""
    from tune.builtin.tiny import load_tokenizer

    return load_tokenizer(name)


def build_model(recipe: Any, tmp_path: Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) as `tune run` builds them for `recipe` (from `load_recipe`): the
    loader, quantization and every adapt step, on CPU, before the strategy wraps anything."""
    from tune.contract.context import RunContext
    from tune.train.setup import build_model as build

    ctx = RunContext(recipe=recipe, output_dir=tmp_path or Path(recipe.train.output_dir))
    loaded, _ = build(plugin_manager(), recipe, ctx)
    return loaded.model, loaded.tokenizer


def tokenize(recipe: Any):
    """The recipe's data as training sees it: the core's `Examples` (recipe from `load_recipe`)."""
    from tune.contract.context import RunContext
    from tune.data.pipeline import load_examples

    pm = plugin_manager()
    ctx = RunContext(recipe=recipe, output_dir=Path(recipe.train.output_dir))
    from tune.train.setup import load_tokenizer as loader_tokenizer

    tokenizer = loader_tokenizer(pm, recipe, ctx)
    return load_examples(pm, tokenizer, ctx)


def train_losses(run_dir: Path) -> list[float]:
    """Per-step train losses from a run's metrics.jsonl."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def final_weights(run_dir: Path) -> dict[str, Any]:
    """The tensors of a run's final/ artifact (PEFT adapter or full model)."""
    from safetensors.torch import load_file

    final = Path(run_dir) / "final"
    name = "adapter_model.safetensors"
    if not (final / name).exists():
        name = "model.safetensors"
    return load_file(str(final / name))


def max_weight_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
