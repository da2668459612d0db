"""A transformers model folder (safetensors) to one GGUF file, with the `gguf` package's writer.

Why our own converter on the `gguf` package: llama.cpp's convert_hf_to_gguf.py is a script in a
repository, not an installable package, and pulls that repository's whole tree; the `gguf`
package (published by llama.cpp) holds the parts that must agree with llama.cpp: the file
writer, the tensor name maps (`TensorNameMap`), the key names, and the Q8_0/BF16 quantizers. What
is left is small and is here: per-architecture hyperparameters, the q/k row order llama.cpp's
RoPE expects for Llama-family models, the vocabulary (vocab.py), and which tensors each quant
keeps in higher precision.

Tensors are written one at a time (the plan is computed from shapes first), so memory stays at
one tensor, not the whole model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.plugin import TuneError, did_you_mean

# model_type -> (GGUF architecture, q/k rows permuted for llama.cpp's RoPE)
ARCHS: dict[str, tuple[str, bool]] = {
    "llama": ("llama", True),
    "mistral": ("llama", True),  # llama.cpp runs Mistral as llama
    "qwen2": ("qwen2", False),
    # mixture-of-experts: each layer's experts as 3-D tensors [experts, out, in] (ffn_*_exps) and
    # the router as ffn_gate_inp; Mixtral is a llama with experts to llama.cpp
    "qwen3_moe": ("qwen3moe", False),
    "mixtral": ("llama", True),
}
# Fused expert weights as transformers 5.x keeps them (and `tune merge` writes them), and the
# per-expert layout of hub checkpoints: both become llama.cpp's stacked tensors.
FUSED_GATE_UP = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.gate_up_proj$")
FUSED_DOWN = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.down_proj$")
PER_EXPERT = re.compile(
    r"model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$"
)
PER_EXPERT_GGUF = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up"}
# what --quant accepts here: (GGML type of 2-D weights, llama.cpp file type)
QUANTS = {"f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32), "q8_0": ("Q8_0", 7)}
# quants made by llama.cpp's own quantizer from tune's f16 file (quantize.py: no Python
# k-quant encoder, and llama.cpp picks the per-tensor type mix); the first ones are verified
LLAMA_CPP_QUANTS = [
    *("q4_k_m", "q5_k_m", "q6_k", "q4_k_s", "q5_k_s", "q3_k_m", "q3_k_s", "q3_k_l", "q2_k"),
    *("q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs"),
]


@dataclass
class Planned:
    name: str  # GGUF tensor name
    source: str | None  # safetensors key (None: computed, e.g. rope_freqs)
    shape: tuple[int, ...]
    qtype: str  # GGML type name
    half: int | None = None  # 0/1: the first/second half of dim 1 (a fused gate_up_proj)
    stack: tuple[str, ...] = ()  # keys stacked on a new first dim (one per expert)


def check_quant(quant: str, where: str) -> None:
    """A TuneError for a quant this plugin cannot write here, naming what can."""
    if quant in QUANTS:
        return
    if quant in LLAMA_CPP_QUANTS:
        from tune_plugin_gguf.quantize import refuse_without_llama

        refuse_without_llama(quant, where)  # written by llama.cpp's quantizer (quantize.py)
        return
    raise TuneError(
        f"unknown --quant '{quant}'.{did_you_mean(quant, list(QUANTS) + LLAMA_CPP_QUANTS)}",
        where=where,
        fix=f"use one of {', '.join(QUANTS)}, or a llama.cpp quant ({', '.join(LLAMA_CPP_QUANTS[:8])}"
        ", ...).",
    )


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise TuneError("no config.json: not a transformers model folder.", where=str(model_dir))
    config = json.loads(path.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in ARCHS:
        raise TuneError(
            f"GGUF export does not support the architecture '{model_type}' "
            f"({', '.join(config.get('architectures') or []) or 'no architectures'}).",
            where=str(path),
            fix=f"supported: {', '.join(ARCHS)}. Other architectures: llama.cpp's "
            "convert_hf_to_gguf.py on the merged model (`tune merge RUN --out DIR`).",
        )
    if model_type == "qwen3_moe" and not config.get("norm_topk_prob", False):
        raise TuneError(
            "this Qwen3-MoE model does not renormalize its top-k routing weights "
            "(norm_topk_prob = false), and llama.cpp's qwen3moe always does: the GGUF would "
            "route tokens differently from the trained model.",
            where=f"{path}: norm_topk_prob",
            fix="export a model trained with norm_topk_prob = true (as Qwen3-MoE's releases are).",
        )
    return config


def _rope(config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope theta, scaling dict or {}) from a transformers v4 or v5 config."""
    params = config.get("rope_parameters") or {}
    scaling = dict(config.get("rope_scaling") or params)
    theta = float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    return theta, {} if kind == "default" else {**scaling, "rope_type": kind}


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _tensor_type(name: str, shape: tuple[int, ...], quant: str) -> str:
    """llama.cpp's rule: 1-D tensors (norms, biases) stay F32; Q8_0 needs rows of 32."""
    if len(shape) < 2 or name == "rope_freqs.weight":
        return "F32"
    qtype = QUANTS[quant][0]
    if qtype == "Q8_0" and shape[-1] % 32:
        return "F16"
    return qtype


def plan(model_dir: Path, config: dict[str, Any], quant: str) -> list[Planned]:
    """Every tensor the GGUF will hold, named and typed, from the safetensors headers only."""
    import gguf
    from safetensors import safe_open

    arch = gguf.MODEL_ARCH[ARCHS[config["model_type"]][0].upper()]
    names = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise TuneError("no *.safetensors weights in the model folder.", where=str(model_dir))
    out: list[Planned] = []
    tied = config.get("tie_word_embeddings", False)
    aliases: dict[str, str] = {}
    keys = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            keys.update({key: (file, tuple(f.get_slice(key).get_shape())) for key in f.keys()})  # noqa: SIM118
    if tied and "model.embed_tokens.weight" not in keys and "lm_head.weight" in keys:
        keys["model.embed_tokens.weight"] = keys["lm_head.weight"]  # saved once, under lm_head
        aliases["model.embed_tokens.weight"] = "lm_head.weight"
    experts: dict[tuple[int, str], dict[int, str]] = {}
    for key, (file, shape) in keys.items():
        if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
            continue
        if fused := FUSED_GATE_UP.match(key):
            layer, (n, rows, cols) = int(fused[1]), shape
            for half, part in enumerate(("gate", "up")):
                name = f"blk.{layer}.ffn_{part}_exps.weight"
                piece = (n, rows // 2, cols)
                out.append(Planned(name, key, piece, _tensor_type(name, piece, quant), half))
            continue
        if fused := FUSED_DOWN.match(key):
            name = f"blk.{int(fused[1])}.ffn_down_exps.weight"
            out.append(Planned(name, key, shape, _tensor_type(name, shape, quant)))
            continue
        if one := PER_EXPERT.match(key):
            part = PER_EXPERT_GGUF.get(one[3], "down")
            experts.setdefault((int(one[1]), part), {})[int(one[2])] = key
            continue
        if key.endswith(".mlp.gate.weight") or key.endswith(".block_sparse_moe.gate.weight"):
            # the router: llama.cpp keeps it in float32 whatever the file type
            target = names.get_name(key, try_suffixes=(".weight",))
            out.append(Planned(target, key, shape, "F32"))
            continue
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise TuneError(
                f"tensor '{key}' has no GGUF name for {config['model_type']}: the "
                "model carries weights the architecture does not have.",
                where=str(file),
                fix="export a plain model (adapters merged); see `tune merge`.",
            )
        source = aliases.get(key, key)
        out.append(Planned(target, source, shape, _tensor_type(target, shape, quant)))
    for (layer, part), by_index in sorted(experts.items()):
        stack = tuple(by_index[i] for i in sorted(by_index))
        shape = (len(stack), *keys[stack[0]][1])
        name = f"blk.{layer}.ffn_{part}_exps.weight"
        out.append(Planned(name, None, shape, _tensor_type(name, shape, quant), stack=stack))
    _, scaling = _rope(config)
    if scaling.get("rope_type") == "llama3":
        out.append(Planned("rope_freqs.weight", None, (_head_dim(config) // 2,), "F32"))
    return out


def add_hparams(writer: Any, config: dict[str, Any], quant: str) -> None:
    """The `<arch>.*` keys llama.cpp reads, from config.json."""
    head_dim = _head_dim(config)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(
        int(config.get("num_key_value_heads") or config["num_attention_heads"])
    )
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(head_dim)
    theta, scaling = _rope(config)
    writer.add_rope_freq_base(theta)
    kind = scaling.get("rope_type")
    if kind in ("linear", "yarn"):
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType[kind.upper()])
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        if kind == "yarn":
            writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif kind not in (None, "llama3"):
        raise TuneError(
            f"RoPE scaling '{kind}' has no GGUF form in this exporter.",
            where="config.json: rope_scaling",
            fix="supported: none, linear, yarn, llama3.",
        )
    experts = config.get("num_experts") or config.get("num_local_experts")
    if experts:
        writer.add_expert_count(int(experts))
        writer.add_expert_used_count(int(config["num_experts_per_tok"]))
        if config.get("moe_intermediate_size"):
            writer.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))
    if config.get("head_dim") and head_dim * int(config["num_attention_heads"]) != int(
        config["hidden_size"]
    ):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(QUANTS[quant][1])
    if quant == "q8_0":
        import gguf

        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _llama3_rope_freqs(config: dict[str, Any]) -> Any:
    """Per-frequency factors of Llama 3.1 RoPE scaling, as llama.cpp reads them."""
    import numpy as np

    theta, s = _rope(config)
    dim = _head_dim(config)
    factor, low, high = s.get("factor", 8.0), s.get("low_freq_factor", 1.0), s["high_freq_factor"]
    old = s.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def permute_qk(weights: Any, n_head: int) -> Any:
    """HF's rotate-half q/k rows to llama.cpp's interleaved RoPE order (undone by readers)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def tensor_data(item: Planned, handle: Any, config: dict[str, Any]) -> Any:
    """The bytes (a numpy array) of one planned tensor, converted and encoded."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, quants

    if item.stack:
        data = np.stack([handle[k].get_tensor(k).to(torch.float32).numpy() for k in item.stack])
    elif item.source is None:
        data = _llama3_rope_freqs(config)
    else:
        data = handle.get_tensor(item.source).to(torch.float32).numpy()
        if item.half is not None:
            rows = data.shape[1] // 2
            data = data[:, item.half * rows : (item.half + 1) * rows]
        if ARCHS[config["model_type"]][1] and item.source.endswith(".weight"):
            if ".self_attn.q_proj." in item.source:
                data = permute_qk(data, int(config["num_attention_heads"]))
            elif ".self_attn.k_proj." in item.source:
                kv = int(config.get("num_key_value_heads") or config["num_attention_heads"])
                data = permute_qk(data, kv)
    if item.qtype == "F32":
        return np.ascontiguousarray(data, dtype=np.float32)
    if item.qtype == "F16":
        return np.ascontiguousarray(data, dtype=np.float16)
    return quants.quantize(np.ascontiguousarray(data), GGMLQuantizationType[item.qtype])


def nbytes(item: Planned) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[item.qtype]]
    return math.prod(item.shape) // block * size
