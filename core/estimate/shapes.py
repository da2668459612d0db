"""Model shapes from the config alone: parameter counts per module (adapters count their own).

Reads `config.json` as JSON (no torch import); only when keys the estimate needs are missing does
it ask transformers' AutoConfig, which fills architecture defaults but imports torch. The
`tune:tiny-*` models use the config in `tune.builtin.tiny`. Covers the Llama family of decoders
(Llama, Mistral, Qwen2/3, Gemma, Phi-3 style shapes: attention q/k/v/o, gated MLP, RMSNorm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tune.contract.memory import ModelShape
from tune.errors import TuneError

Shapes = ModelShape  # the name the estimate modules use

NEEDED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Decoder families whose layer is q/k/v/o + gate/up/down (+ two norms).
LLAMA_LIKE = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "olmo",
    "olmo2",
    "smollm3",
    "granite",
    "cohere",
    "mixtral_dense",
    # the language model of Qwen2-VL / Qwen2.5-VL (a loader's ModelConfig gives its config)
    "qwen2_vl_text",
    "qwen2_5_vl_text",
}
# Architectures with biases on q/k/v whatever `attention_bias` says.
QKV_BIAS = {"qwen2", "qwen2_vl_text", "qwen2_5_vl_text"}
MLP = ("gate_proj", "up_proj", "down_proj")


def read_config(recipe: Any) -> dict[str, Any]:
    """The model's config as a dict, without loading weights."""
    path = recipe.model.path
    loader = recipe.backends.get("loader")
    settings = loader.settings if loader is not None else None
    overrides = dict(getattr(settings, "config_overrides", {}) or {})
    if path.startswith("tune:"):
        return {**_tiny_config(recipe, path), **overrides}
    local = Path(path).expanduser()
    if not local.is_absolute() and not local.exists():
        candidate = recipe.path.parent / local
        local = candidate if candidate.exists() else local
    file = local / "config.json"
    if local.is_dir() and file.is_file():
        from tune.model.checks import read_config as read_checked

        raw = read_checked(local)
    else:
        raw = _hub_config(recipe, path)
    raw = raw.get("text_config", raw) if "hidden_size" not in raw else raw
    if any(key not in raw for key in NEEDED):
        raw = _auto_config(recipe, str(local if local.is_dir() else path), raw)
    config = {**raw, **overrides}
    from tune.model.checks import check_config

    check_config(config, f"{recipe.path}: [model] path ({path})")
    return config


def _tiny_config(recipe: Any, path: str) -> dict[str, Any]:
    from tune.builtin.tiny import ARCHS, ASSETS, BASE_CONFIG, MOE_CONFIG

    name = path.removeprefix("tune:")
    if name not in ARCHS:
        raise TuneError(
            f"unknown built-in model '{path}'.",
            where=f"{recipe.path}: [model] path",
            fix=f"use one of {', '.join('tune:' + n for n in ARCHS)}.",
        )
    tok = json.loads((ASSETS / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = set(tok["model"]["vocab"].values()) | {t["id"] for t in tok.get("added_tokens", [])}
    arch = ARCHS[name]
    moe = MOE_CONFIG if "config" in arch else {}
    return {
        **BASE_CONFIG,
        **moe,
        **arch.get("config", {}),
        "model_type": arch["model_type"],
        "vocab_size": len(vocab),
    }


def _hub_config(recipe: Any, path: str) -> dict[str, Any]:
    """config.json of a hub id from the local Hugging Face cache only (never the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id is reported below like a missing one
        cached = None
    if isinstance(cached, str):
        from tune.model.checks import read_config as read_checked

        return read_checked(Path(cached).parent) or {}
    raise TuneError(
        f"tune estimate reads the model's config.json only, and '{path}' is neither a local "
        "directory with a config.json nor a hub id in the local Hugging Face cache.",
        where=f"{recipe.path}: [model] path",
        fix=f"download just the config once (`huggingface-cli download {path} config.json`), "
        "or point [model] path at a directory holding config.json.",
    )


def _auto_config(recipe: Any, path: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Fill architecture defaults through transformers (imports torch)."""
    try:
        from transformers import AutoConfig

        if "model_type" in raw:
            config = AutoConfig.for_model(**raw)
        else:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise TuneError(
            f"cannot read the model config of '{path}': {str(exc).splitlines()[0]}",
            where=f"{recipe.path}: [model] path",
            fix="point [model] path at a directory with a complete config.json.",
        ) from None
    config = getattr(config, "text_config", None) or config
    return {**config.to_dict(), **{k: v for k, v in raw.items() if k in NEEDED}}


# Mixture-of-experts decoders: Llama-like attention, and per layer a router and fused experts.
# model_type -> (config key of the expert count, of one expert's width, experts carry biases)
MOE = {
    "qwen3_moe": ("num_experts", "moe_intermediate_size", False),
    "mixtral": ("num_local_experts", "intermediate_size", False),
    "gpt_oss": ("num_local_experts", "intermediate_size", True),
}


def _moe(cfg: dict[str, Any], shape: Shapes) -> Shapes:
    """`shape` (attention as Llama's) with the MoE layer of `cfg` in place of the dense MLP."""
    count_key, width_key, biased = MOE[shape.model_type]
    experts, width = int(cfg[count_key]), int(cfg[width_key])
    k = int(cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or 2)
    h = shape.hidden
    for name in MLP:
        shape.linears.pop(name)
        shape.biases.pop(name)
    if shape.model_type == "gpt_oss":  # attention with biases, and a learned sink per head
        shape.biases.update({n: True for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
        shape.layer_extra = shape.heads
    shape.intermediate = k * width
    shape.experts, shape.experts_per_token = experts, k
    shape.expert_weights = {"gate_up_proj": (h, 2 * width), "down_proj": (width, h)}
    shape.expert_biases = shape.router_bias = biased
    return shape


def shapes_from_config(cfg: dict[str, Any], where: str) -> Shapes:
    """Shapes of a Llama-family decoder; other families are refused with what is supported."""
    model_type = cfg.get("model_type", "")
    if model_type in MOE:
        dense = shapes_from_config({**cfg, "model_type": "llama", "intermediate_size": 1}, where)
        dense.model_type, dense.config = model_type, cfg
        return _moe(cfg, dense)
    if model_type not in LLAMA_LIKE or any(key not in cfg for key in NEEDED):
        raise TuneError(
            f"tune estimate does not know the layer shapes of model type '{model_type}'.",
            where=where,
            fix=f"it covers {', '.join(sorted(LLAMA_LIKE | set(MOE)))}; for another architecture, measure "
            "with a short `tune run -o train.max_steps=2` (the summary reports peak memory).",
        )
    h, i = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    attn_bias = bool(cfg.get("attention_bias", False))
    mlp_bias = bool(cfg.get("mlp_bias", False))
    linears = {
        "q_proj": (h, heads * hd),
        "k_proj": (h, kv * hd),
        "v_proj": (h, kv * hd),
        "o_proj": (heads * hd, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    qkv_bias = attn_bias or model_type in QKV_BIAS
    biases = {n: qkv_bias for n in ("q_proj", "k_proj", "v_proj")}
    biases.update({"o_proj": attn_bias, **{n: mlp_bias for n in MLP}})
    return Shapes(
        model_type=model_type,
        hidden=h,
        intermediate=i,
        layers=int(cfg["num_hidden_layers"]),
        heads=heads,
        kv_heads=kv,
        head_dim=hd,
        vocab=int(cfg["vocab_size"]),
        tied=bool(cfg.get("tie_word_embeddings", model_type in ("gemma", "gemma2"))),
        linears=linears,
        biases=biases,
        config=cfg,
    )
