"""Offline tiny models `tune:tiny-llama|qwen2|mistral` (and MoE: `tiny-qwen3-moe|mixtral|gpt-oss`): a config in code plus a shipped tokenizer.

The tokenizer is byte-level (256 byte tokens + special tokens, no merges): tiny, covers any
text, and each character is a token, which suits the toy tasks a tiny model can learn on CPU.
Regenerate the shipped files with `python -m tune.builtin.tiny`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).parent / "assets" / "tiny-tokenizer"
BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
SPECIAL = [
    BOS,
    EOS,
    PAD,
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "[INST]",
    "[/INST]",
]
# Version of the tiny weights recipe: bump when configs change so cached copies are rebuilt.
TINY_VERSION = 3

ARCHS: dict[str, dict[str, Any]] = {
    "tiny-llama": {"model_type": "llama", "template": "llama-3.1"},
    "tiny-qwen2": {"model_type": "qwen2", "template": "chatml"},
    "tiny-mistral": {"model_type": "mistral", "template": "mistral"},
    # Mixture-of-experts: fused 3-D expert weights (transformers 5.x), a top-k router, and the
    # router's load-balancing loss on (output_router_logits), as their real configs train.
    "tiny-qwen3-moe": {
        "model_type": "qwen3_moe",
        "template": "chatml",
        "config": {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 128,
            "norm_topk_prob": True,  # as Qwen3-MoE's releases (and llama.cpp) route
        },
    },
    "tiny-mixtral": {
        "model_type": "mixtral",
        "template": "mistral",
        "config": {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 128},
    },
    "tiny-gpt-oss": {
        "model_type": "gpt_oss",
        "template": "chatml",
        "config": {
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "intermediate_size": 128,
            "head_dim": 32,
            "sliding_window": 128,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
        },
    },
}
MOE_CONFIG = {"output_router_logits": True, "router_aux_loss_coef": 0.01}
BASE_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 384,  # a multiple of 64: bitsandbytes CPU 4-bit kernels need it
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}


def build_tokenizer():
    """Build the byte-level tokenizer from scratch (what the shipped files contain)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL)
    from tune.plugin import chat

    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=chat.TEMPLATES["llama-3.1"]["template"],
        model_max_length=BASE_CONFIG["max_position_embeddings"],
    )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    from tune.plugin import chat

    tokenizer = AutoTokenizer.from_pretrained(str(ASSETS))
    tokenizer.chat_template = chat.TEMPLATES[ARCHS[name]["template"]]["template"]
    return tokenizer


def materialize(name: str, overrides: dict[str, Any], seed: int) -> Path:
    """Write the tiny model (random weights from `seed`) to a local dir once; return the dir.

    Loading it back with `from_pretrained` makes tiny models go through exactly the path real
    checkpoints take (quantization, dtype, attention implementation), and gives saved adapters
    a base path that plain PEFT can open.
    """
    key = json.dumps([TINY_VERSION, name, overrides, seed], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    from tune.plugin import files

    target = files.cache_root() / "models" / f"{name}-{digest}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = load_tokenizer(name)
    arch = ARCHS[name]
    moe = MOE_CONFIG if "config" in arch else {}
    cfg = {**BASE_CONFIG, **moe, **arch.get("config", {}), **overrides}
    config = AutoConfig.for_model(
        ARCHS[name]["model_type"],
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **cfg,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    stops = [tokenizer.eos_token_id] + tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|im_end|>"])
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    def write(folder: Path) -> None:
        # Not model.save_pretrained: under an initialized process group it writes on rank 0
        # only, and whichever rank holds the lock must write the whole model.
        from safetensors.torch import save_model

        model.config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(folder)

    return files.write_once(target, write)


if __name__ == "__main__":
    ASSETS.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(str(ASSETS))
    print(f"wrote {ASSETS}")
